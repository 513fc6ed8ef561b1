/* daemon/loader.h: run-time model loads off the engine thread.  A LoadModel can take
 * seconds (a large file to map and check, weights to upload to a GPU); run on the engine
 * thread it would stop every other model's generation for that long.  So the engine thread
 * hands the load to a loader thread, keeps stepping, and adopts the finished ModelEntry
 * when loader_fd() turns readable.
 *
 * One load at a time: the engine refuses a second LoadModel while one is in flight
 * (worker.c says how).  A thread is started per load and joined when it is adopted: loads
 * are rare, and a join is what makes the loader's writes visible to the engine thread.
 *
 * Ownership: the Loader belongs to the engine thread; all functions below are called
 * only there.  Between loader_start() and loader_finish() the loader thread owns the job
 * and its outcome (the ModelEntry being built, the error text) and touches nothing else:
 * registry_load() reads only its arguments, a copy of the SchedParams, the file and /proc. */
#ifndef QD_DAEMON_LOADER_H
#define QD_DAEMON_LOADER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "sched.h"

typedef struct Loader Loader;

/* Makes an idle loader (its eventfd, no thread yet).  Returns 0 or -errno. */
int loader_new(Loader **ret);
/* Waits for a load still in flight (there is no way to interrupt registry_load()), frees
 * what it built, and frees the loader.  NULL-safe. */
void loader_free(Loader *l);

/* Readable (POLLIN) once the load in flight has finished; never readable while idle. */
int loader_fd(const Loader *l);
/* True between loader_start() and loader_finish(). */
bool loader_busy(const Loader *l);
/* True when the load in flight has finished and loader_finish() will not block. */
bool loader_done(const Loader *l);
/* Name of the model being loaded ("" when idle). */
const char *loader_name(const Loader *l);

/* Starts registry_load(P, PATH, NAME, N_SLOTS, N_CTX, LIMIT_LEFT) on a new thread.  NAME
 * must not be empty (the caller resolves the default name first, so that it can refuse
 * duplicates before the load).  P is copied; its strings must outlive the loader.
 * Returns 0, -EBUSY when a load is in flight, -ENAMETOOLONG, or -errno from
 * pthread_create. */
int loader_start(Loader *l, const SchedParams *p, const char *path, const char *name,
		 int n_slots, int n_ctx, uint64_t limit_left);
/* Joins the finished load (waits when it has not finished) and makes the loader idle.
 * Returns registry_load()'s result: 0 with *ret_m (now the caller's), or -errno with ERR
 * filled.  *ret_ns gets how long the load took in either case.  -EINVAL when idle. */
int loader_finish(Loader *l, ModelEntry **ret_m, uint64_t *ret_ns, char *err, size_t errlen);

#endif

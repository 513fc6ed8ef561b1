/* daemon/worker_internal.h: the engine thread's state, shared by worker.c (the loop, the
 * task dispatch, loads and unloads) and query.c (read-only answers).  Everything here is
 * owned by the engine thread and used only there, except beat_ns and n_models (read by
 * the loop thread through worker.h). */
#ifndef QD_DAEMON_WORKER_INTERNAL_H
#define QD_DAEMON_WORKER_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>

#include "loader.h"
#include "proto/quantd.pb-c.h"
#include "sched.h"
#include "worker.h"

typedef struct {
	uint64_t session_id;
	SessionShm *shm; /* a reference */
} WakeEntry;

struct Worker {
	WorkerParams p;
	Queue *tasks, *results;
	pthread_t th;
	ModelEntry *models;
	Req *pending_final;
	/* run-time LoadModel: the loader thread builds the entry, this thread adopts it */
	Loader *loader;
	Task *load_task;  /* the LoadModel being served (kept for its reply), or NULL */
	bool stop;
	uint64_t last_watchdog;
	uint64_t last_extend, first_extend; /* EXTEND_TIMEOUT_USEC sent while a stop waits for a load */
	_Atomic uint64_t beat_ns;
	_Atomic int n_models;
	/* sessions whose clients sleep and got records since the last flush (the shm
	 * references keep a fallback possible when the hand-off cannot be allocated) */
	WakeEntry *wake;
	size_t n_wake, cap_wake;
};

/* worker.c */

/* Packs REP (its id set to T's request) and queues it for T's connection; a reply too
 * big for one control packet becomes an E2BIG error reply.  Dropped when out of memory. */
void worker_reply(Worker *w, const Task *t, Quantd__Reply *rep);
/* An error reply: ERR as a positive errno (either sign accepted; 0: success) and MSG. */
void worker_reply_err(Worker *w, const Task *t, int err, const char *msg);
/* The loaded model called NAME ("": the first one), or NULL. */
ModelEntry *worker_find_model(Worker *w, const char *name);
/* Why there is no loaded model called NAME (none at all, still loading, unknown), into E. */
void worker_no_model(const Worker *w, const char *name, char *e, size_t len);
/* Calls FN on every live request (queued or running) of every model; FN may finish it. */
void worker_each_req(Worker *w, void (*fn)(Worker *, Req *, void *), void *arg);

/* query.c: each answers T (and leaves T to the caller to free). */

void query_fill_info(const ModelEntry *m, Quantd__ModelInfo *mi); /* pointers into M */
void query_list(Worker *w, Task *t);
void query_stats(Worker *w, Task *t);
void query_tokenize(Worker *w, Task *t);
void query_detokenize(Worker *w, Task *t);

#endif

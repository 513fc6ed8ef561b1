/* daemon/worker.h: the engine thread.  It loads the startup models, then loops: take tasks
 * from the loop thread, run one scheduler step per model, write records into session rings,
 * feed the systemd watchdog (only this loop does, so a wedged engine stops feeding it), and
 * answer through the result queue.  It owns every Model, Context and request, except a
 * model that a run-time LoadModel is building: that one belongs to the loader thread
 * (loader.h) until the engine thread adopts it. */
#ifndef QD_DAEMON_WORKER_H
#define QD_DAEMON_WORKER_H

#include <stdatomic.h>
#include <stdint.h>

#include "queue.h"
#include "sched.h"

typedef struct Worker Worker;

typedef struct {
	SchedParams sched;
	const char *const *models; /* startup model paths, "NAME=PATH" or "PATH" */
	int n_models;
	uint64_t watchdog_usec;    /* 0: no watchdog */
	uint64_t t_start_ns;       /* daemon start, for uptime */
} WorkerParams;

/* Starts the engine thread.  It posts RESULT_READY (err 0, or the -errno of the first
 * model that failed to load) once the startup models are loaded, and RESULT_STOPPED after
 * TASK_SHUTDOWN.  Returns 0 or -errno.  P's strings must outlive the worker. */
int worker_start(const WorkerParams *p, Queue *tasks, Queue *results, Worker **ret);
/* Joins the thread (after RESULT_STOPPED) and frees the worker. NULL-safe. */
void worker_join(Worker *w);

/* Read by the loop thread for Health (the only state shared outside the queues; written
 * by the engine thread with relaxed stores). */
uint64_t worker_heartbeat_ns(const Worker *w);
int worker_n_models(const Worker *w);

#endif

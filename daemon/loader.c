/* daemon/loader.c: run-time model loads on their own thread (see loader.h). */
#include "loader.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

struct Loader {
	int efd;              /* written once by the loader thread when it is done */
	pthread_t th;
	bool busy;            /* engine thread: started and not yet joined */
	atomic_bool done;     /* loader thread -> engine thread: the outcome is final */
	/* the job: written by the engine thread before the thread starts, then read-only */
	SchedParams p;
	char path[4096], name[QD_NAME_MAX];
	int n_slots, n_ctx;
	uint64_t limit_left;
	/* the outcome: written by the loader thread only, read after the join */
	int rc;
	ModelEntry *m;
	char err[512];
	uint64_t ns;
};

int loader_new(Loader **ret)
{
	Loader *l = calloc(1, sizeof *l);
	if (!l)
		return -ENOMEM;
	l->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (l->efd < 0) {
		int e = errno;
		free(l);
		return -e;
	}
	atomic_init(&l->done, false);
	*ret = l;
	return 0;
}

static void *loader_main(void *arg)
{
	Loader *l = arg;
	uint64_t t0 = now_ns();
	l->err[0] = 0;
	l->rc = registry_load(&l->p, l->path, l->name, l->n_slots, l->n_ctx, l->limit_left,
			      &l->m, l->err, sizeof l->err);
	l->ns = now_ns() - t0;
	atomic_store_explicit(&l->done, true, memory_order_release);
	uint64_t one = 1;
	ssize_t n = write(l->efd, &one, sizeof one);
	(void)n; /* cannot fail short of a bug: the counter is far from its limit */
	return NULL;
}

int loader_start(Loader *l, const SchedParams *p, const char *path, const char *name,
		 int n_slots, int n_ctx, uint64_t limit_left)
{
	if (l->busy)
		return -EBUSY;
	if (strlen(path) >= sizeof l->path || !name[0] || strlen(name) >= sizeof l->name)
		return -ENAMETOOLONG;
	l->p = *p;
	snprintf(l->path, sizeof l->path, "%s", path);
	snprintf(l->name, sizeof l->name, "%s", name);
	l->n_slots = n_slots;
	l->n_ctx = n_ctx;
	l->limit_left = limit_left;
	l->rc = 0;
	l->m = NULL;
	atomic_store(&l->done, false);
	/* The daemon takes signals through a signalfd on the loop thread: the loader (and the
	 * backend threads it may start) must never be picked to run a handler. */
	sigset_t all, old;
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	int rc = pthread_create(&l->th, NULL, loader_main, l);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (rc)
		return -rc;
	l->busy = true;
	return 0;
}

int loader_fd(const Loader *l)
{
	return l->efd;
}

bool loader_busy(const Loader *l)
{
	return l->busy;
}

bool loader_done(const Loader *l)
{
	return l->busy && atomic_load_explicit(&l->done, memory_order_acquire);
}

const char *loader_name(const Loader *l)
{
	return l->busy ? l->name : "";
}

int loader_finish(Loader *l, ModelEntry **ret_m, uint64_t *ret_ns, char *err, size_t errlen)
{
	if (!l->busy)
		return -EINVAL;
	pthread_join(l->th, NULL);
	l->busy = false;
	uint64_t v;
	ssize_t n = read(l->efd, &v, sizeof v); /* back to not readable */
	(void)n;
	*ret_ns = l->ns;
	if (l->rc < 0) {
		snprintf(err, errlen, "%s", l->err[0] ? l->err : strerror(-l->rc));
		return l->rc;
	}
	*ret_m = l->m;
	l->m = NULL;
	return 0;
}

void loader_free(Loader *l)
{
	if (!l)
		return;
	if (l->busy) {
		ModelEntry *m = NULL;
		uint64_t ns;
		char err[8];
		if (loader_finish(l, &m, &ns, err, sizeof err) == 0)
			registry_free(m);
	}
	close(l->efd);
	free(l);
}

/* daemon/shm.c: per-session sealed memfd and doorbells. */
#include "shm.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

int shm_new(SessionShm **ret)
{
	SessionShm *s = calloc(1, sizeof *s);
	if (!s)
		return -ENOMEM;
	s->memfd = s->submit_rd = s->complete_wr = s->client_fds[0] = s->client_fds[1] = -1;
	s->map = MAP_FAILED;
	int rc;
	s->memfd = memfd_create("quantd-session", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (s->memfd < 0)
		goto fail_errno;
	if (ftruncate(s->memfd, QD_SHM_SIZE) < 0)
		goto fail_errno;
	/* Sealed before the client ever sees it: it can neither shrink it under our mapping
	 * (SIGBUS in the daemon) nor grow it to charge us memory. */
	if (fcntl(s->memfd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) < 0)
		goto fail_errno;
	s->map = mmap(NULL, QD_SHM_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, s->memfd, 0);
	if (s->map == MAP_FAILED)
		goto fail_errno;
	int p[2];
	if (pipe2(p, O_CLOEXEC | O_NONBLOCK) < 0)
		goto fail_errno;
	s->submit_rd = p[0];
	s->client_fds[0] = p[1];
	if (pipe2(p, O_CLOEXEC | O_NONBLOCK) < 0)
		goto fail_errno;
	s->client_fds[1] = p[0];
	s->complete_wr = p[1];

	QdShmHeader h = {
		.magic = QD_SHM_MAGIC, .abi_version = QD_ABI_VERSION, .size = QD_SHM_SIZE,
		.submit_ctl = QD_SHM_SUBMIT_CTL, .complete_ctl = QD_SHM_COMPLETE_CTL,
		.submit_data = QD_SHM_SUBMIT_DATA, .submit_cap = QD_SUBMIT_CAP,
		.complete_data = QD_SHM_COMPLETE_DATA, .complete_cap = QD_COMPLETE_CAP,
	};
	memcpy(s->map, &h, sizeof h);
	/* The daemon's ring views come from compile-time offsets, never from the header. */
	qd_ring_init(&s->submit, (QdRingCtl *)(s->map + QD_SHM_SUBMIT_CTL),
		     s->map + QD_SHM_SUBMIT_DATA, QD_SUBMIT_CAP);
	qd_ring_init(&s->complete, (QdRingCtl *)(s->map + QD_SHM_COMPLETE_CTL),
		     s->map + QD_SHM_COMPLETE_DATA, QD_COMPLETE_CAP);
	atomic_init(&s->refs, 1);
	*ret = s;
	return 0;
fail_errno:
	rc = -errno;
	atomic_init(&s->refs, 1);
	shm_unref(s);
	return rc;
}

SessionShm *shm_ref(SessionShm *s)
{
	atomic_fetch_add_explicit(&s->refs, 1, memory_order_relaxed);
	return s;
}

void shm_unref(SessionShm *s)
{
	if (!s || atomic_fetch_sub_explicit(&s->refs, 1, memory_order_acq_rel) != 1)
		return;
	if (s->map != MAP_FAILED)
		munmap(s->map, QD_SHM_SIZE);
	if (s->memfd >= 0)
		close(s->memfd);
	if (s->submit_rd >= 0)
		close(s->submit_rd);
	if (s->complete_wr >= 0)
		close(s->complete_wr);
	shm_drop_client_fds(s);
	free(s);
}

void shm_drop_client_fds(SessionShm *s)
{
	for (int i = 0; i < 2; i++) {
		if (s->client_fds[i] >= 0)
			close(s->client_fds[i]);
		s->client_fds[i] = -1;
	}
}

void shm_wake_client(SessionShm *s)
{
	if (qd_ring_consumer_wants_wake(&s->complete)) {
		char one = 1;
		/* EAGAIN: the pipe is full, so the client has a wakeup pending anyway;
		 * EPIPE: the client is gone (SIGPIPE is ignored by the daemon). */
		ssize_t n = write(s->complete_wr, &one, 1);
		(void)n;
	}
}

void shm_drain_doorbell(SessionShm *s)
{
	char buf[64];
	while (read(s->submit_rd, buf, sizeof buf) == (ssize_t)sizeof buf)
		;
}

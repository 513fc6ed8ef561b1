/* daemon/loop.c: the io_uring event loop (see loop.h).
 *
 * Every submission's user_data is (id << 8) | op, where id is a session id (0 for the
 * daemon's own fds).  Sessions are looked up by id, so a completion that arrives after its
 * session was closed finds nothing and is dropped: no pointer to freed memory ever sits in
 * the ring. */
#include "loop.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/signalfd.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include "log.h"

#define RING_ENTRIES 1024
#define N_BUFS 64                  /* power of two */
#define BUF_GROUP 1
#define BUF_SIZE (sizeof(struct io_uring_recvmsg_out) + QD_MSG_MAX)

/* recvmsg multishot reads only the name and control lengths from this, once per arm. */
static struct msghdr recv_mh;

struct io_uring_sqe *loop_sqe(Loop *L)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&L->ring);
	if (!sqe) {
		io_uring_submit(&L->ring);
		sqe = io_uring_get_sqe(&L->ring);
	}
	return sqe; /* after a submit the SQ has room */
}

static void arm_accept(Loop *L)
{
	struct io_uring_sqe *sqe = loop_sqe(L);
	io_uring_prep_multishot_accept(sqe, L->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
	io_uring_sqe_set_data64(sqe, loop_ud(0, OP_ACCEPT));
}

static void arm_recv(Loop *L, Session *s)
{
	struct io_uring_sqe *sqe = loop_sqe(L);
	io_uring_prep_recvmsg_multishot(sqe, s->fd, &recv_mh, 0);
	sqe->flags |= IOSQE_BUFFER_SELECT;
	sqe->buf_group = BUF_GROUP;
	io_uring_sqe_set_data64(sqe, loop_ud(s->id, OP_RECV));
}

void loop_arm_bell(Loop *L, Session *s)
{
	struct io_uring_sqe *sqe = loop_sqe(L);
	io_uring_prep_poll_multishot(sqe, s->shm->submit_rd, POLLIN);
	io_uring_sqe_set_data64(sqe, loop_ud(s->id, OP_BELL));
}

static void arm_poll(Loop *L, int fd, int op)
{
	struct io_uring_sqe *sqe = loop_sqe(L);
	io_uring_prep_poll_multishot(sqe, fd, POLLIN);
	io_uring_sqe_set_data64(sqe, loop_ud(0, op));
}

static void cancel_op(Loop *L, uint64_t id, int op)
{
	struct io_uring_sqe *sqe = loop_sqe(L);
	io_uring_prep_cancel64(sqe, loop_ud(id, op), 0);
	io_uring_sqe_set_data64(sqe, loop_ud(0, OP_CANCEL));
}

static void buf_return(Loop *L, unsigned bid)
{
	io_uring_buf_ring_add(L->br, L->bufs + (size_t)bid * BUF_SIZE, BUF_SIZE, (unsigned short)bid,
			      io_uring_buf_ring_mask(N_BUFS), 0);
	io_uring_buf_ring_advance(L->br, 1);
}

/* liburing 2.3 has no io_uring_setup_buf_ring(): map and register the ring ourselves. */
static int setup_bufs(Loop *L)
{
	size_t rsz = N_BUFS * sizeof(struct io_uring_buf);
	void *r = mmap(NULL, rsz, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
	if (r == MAP_FAILED)
		return -errno;
	L->br = r;
	L->bufs = malloc((size_t)N_BUFS * BUF_SIZE);
	if (!L->bufs)
		return -ENOMEM;
	struct io_uring_buf_reg reg = { .ring_addr = (uintptr_t)r, .ring_entries = N_BUFS,
					.bgid = BUF_GROUP };
	int rc = io_uring_register_buf_ring(&L->ring, &reg, 0);
	if (rc < 0)
		return rc;
	io_uring_buf_ring_init(L->br);
	for (unsigned i = 0; i < N_BUFS; i++)
		io_uring_buf_ring_add(L->br, L->bufs + (size_t)i * BUF_SIZE, BUF_SIZE,
				      (unsigned short)i, io_uring_buf_ring_mask(N_BUFS), (int)i);
	io_uring_buf_ring_advance(L->br, N_BUFS);
	return 0;
}

int loop_init(Loop *L, int listen_fd, int sig_fd, Queue *tasks, Queue *results)
{
	memset(L, 0, offsetof(Loop, arena));
	L->listen_fd = listen_fd;
	L->sig_fd = sig_fd;
	L->tasks = tasks;
	L->results = results;
	L->next_session_id = 1;
	L->next_request_id = 1;
	L->t_start_ns = now_ns();
	qd_arena_init(&L->arena, L->arena_buf, sizeof L->arena_buf);
	int rc = io_uring_queue_init(RING_ENTRIES, &L->ring, 0);
	if (rc < 0)
		return rc;
	rc = setup_bufs(L);
	if (rc < 0)
		return rc;
	arm_accept(L);
	arm_poll(L, results->efd, OP_RESULTS);
	arm_poll(L, sig_fd, OP_SIGNAL);
	return 0;
}

void loop_done(Loop *L)
{
	for (int b = 0; b < LOOP_BUCKETS; b++)
		while (L->bucket[b])
			session_close(L, L->bucket[b], NULL);
	io_uring_queue_exit(&L->ring);
	if (L->br)
		munmap(L->br, N_BUFS * sizeof(struct io_uring_buf));
	free(L->bufs);
	while (L->uses) {
		UidUse *u = L->uses;
		L->uses = u->next;
		free(u);
	}
}

static void on_accept(Loop *L, int fd)
{
	if (L->stopping || L->n_sessions >= (uint32_t)L->pol.max_sessions) {
		if (!L->stopping)
			log_warn("refusing a connection: %u sessions open", L->n_sessions);
		close(fd);
		return;
	}
	Session *s = calloc(1, sizeof *s);
	if (!s) {
		close(fd);
		return;
	}
	socklen_t len = sizeof s->cred;
	gid_t groups[64];
	socklen_t glen = sizeof groups;
	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &s->cred, &len) < 0) {
		log_warn("SO_PEERCRED: %m");
		close(fd);
		free(s);
		return;
	}
	int ng = 0;
	if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups, &glen) == 0)
		ng = (int)(glen / sizeof(gid_t));
	s->allowed = policy_allows(&L->pol, s->cred.uid, s->cred.gid, groups, ng);
	s->fd = fd;
	s->id = L->next_session_id++;
	uint32_t b = (uint32_t)(s->id % LOOP_BUCKETS);
	s->hnext = L->bucket[b];
	L->bucket[b] = s;
	L->n_sessions++;
	arm_recv(L, s);
}

static void on_recv(Loop *L, Session *s, struct io_uring_cqe *cqe)
{
	bool more = cqe->flags & IORING_CQE_F_MORE;
	if (!(cqe->flags & IORING_CQE_F_BUFFER)) {
		if (cqe->res == -ENOBUFS || (cqe->res >= 0 && !more)) {
			if (cqe->res == -ENOBUFS)
				arm_recv(L, s); /* buffers come back as packets are handled */
			else
				session_close(L, s, NULL);
		} else if (cqe->res < 0) {
			session_close(L, s, cqe->res == -ECONNRESET ? NULL : "receive failed");
		}
		return;
	}
	unsigned bid = cqe->flags >> IORING_CQE_BUFFER_SHIFT;
	uint8_t *buf = L->bufs + (size_t)bid * BUF_SIZE;
	struct io_uring_recvmsg_out *o = io_uring_recvmsg_validate(buf, cqe->res, &recv_mh);
	if (!o || cqe->res <= 0) {
		buf_return(L, bid);
		session_close(L, s, NULL);
		return;
	}
	if (o->flags & MSG_TRUNC) {
		buf_return(L, bid);
		log_info("session %llu: packet of %u bytes exceeds %u", (unsigned long long)s->id,
			 o->payloadlen, QD_MSG_MAX);
		session_send_err(L, s, 0, EPROTO, "control message too large");
		session_close(L, s, "oversized control message");
		return;
	}
	if (o->payloadlen == 0 || (o->flags & MSG_CTRUNC)) { /* EOF, or fds we never take */
		buf_return(L, bid);
		session_close(L, s, o->payloadlen ? "sent file descriptors" : NULL);
		return;
	}
	uint64_t id = s->id;
	session_on_packet(L, s, io_uring_recvmsg_payload(o, &recv_mh), o->payloadlen);
	buf_return(L, bid);
	s = loop_find(L, id);
	if (s && !more)
		arm_recv(L, s);
}

/* Rings the complete doorbell of every session listed in R (the engine saw each one's
 * consumer_sleeping flag after publishing its records) with one io_uring_enter for the
 * whole step.  Submitted at once: the SQEs name fds by number, and only while these
 * sessions are known to be open is the number known to be theirs. */
static void wake_sessions(Loop *L, const Result *r)
{
	static const char one = 1;
	size_t n = r->len / sizeof(uint64_t), queued = 0;
	for (size_t i = 0; i < n; i++) {
		uint64_t id;
		memcpy(&id, r->data + i * sizeof id, sizeof id);
		Session *s = loop_find(L, id);
		if (!s || !s->shm)
			continue;
		struct io_uring_sqe *sqe = loop_sqe(L);
		/* A full pipe (-EAGAIN: a wakeup is pending anyway) or a gone client (-EPIPE)
		 * is not an error worth a completion. */
		io_uring_prep_write(sqe, s->shm->complete_wr, &one, 1, (uint64_t)-1);
		sqe->flags |= IOSQE_CQE_SKIP_SUCCESS;
		io_uring_sqe_set_data64(sqe, loop_ud(0, OP_WAKE));
		queued++;
	}
	if (queued)
		io_uring_submit(&L->ring);
}

static void on_results(Loop *L)
{
	for (QNode *n = queue_take(L->results), *next; n; n = next) {
		next = n->next;
		Result *r = (Result *)n;
		Session *s;
		switch (r->kind) {
		case RESULT_REPLY:
			s = loop_find(L, r->conn_id);
			if (s && qd_frame_send_raw(s->fd, r->data, r->len, NULL, 0) < 0)
				session_close(L, s, "client does not read its replies");
			break;
		case RESULT_REQ_DONE: {
			UidUse *u = policy_use(&L->uses, r->uid);
			if (u) {
				u->requests--;
				u->tokens -= r->tokens_reserved;
			}
			s = loop_find(L, r->session_id);
			if (s)
				s->n_requests--;
			policy_gc(&L->uses);
			break;
		}
		case RESULT_KILL_SESSION:
			s = loop_find(L, r->session_id);
			if (s)
				session_close(L, s, (const char *)r->data);
			break;
		case RESULT_READY:
			if (r->err < 0) {
				sd_notifyf(0, "STATUS=Failed to load models\nERRNO=%d", -r->err);
				L->exit_code = 1;
				L->stopping = true;
				Task *t = calloc(1, sizeof *t);
				if (t) {
					t->kind = TASK_SHUTDOWN;
					queue_push(L->tasks, &t->node);
				}
			} else {
				L->ready = true;
				sd_notifyf(0, "READY=1\nSTATUS=Serving %d model%s",
					   worker_n_models(L->worker),
					   worker_n_models(L->worker) == 1 ? "" : "s");
				log_info("ready: %d model%s loaded", worker_n_models(L->worker),
					 worker_n_models(L->worker) == 1 ? "" : "s");
			}
			break;
		case RESULT_STOPPED:
			L->stopped = true;
			break;
		case RESULT_WAKE:
			wake_sessions(L, r);
			break;
		}
		free(r);
	}
}

static void begin_stop(Loop *L, const char *why)
{
	if (L->stopping)
		return;
	L->stopping = true;
	log_info("stopping (%s)", why);
	sd_notify(0, "STOPPING=1\nSTATUS=Stopping");
	cancel_op(L, 0, OP_ACCEPT);
	Task *t = calloc(1, sizeof *t);
	if (t) {
		t->kind = TASK_SHUTDOWN;
		queue_push(L->tasks, &t->node);
	}
}

static void on_signal(Loop *L)
{
	struct signalfd_siginfo si;
	while (read(L->sig_fd, &si, sizeof si) == (ssize_t)sizeof si)
		if (si.ssi_signo == SIGTERM || si.ssi_signo == SIGINT)
			begin_stop(L, si.ssi_signo == SIGTERM ? "SIGTERM" : "SIGINT");
}

static void on_cqe(Loop *L, struct io_uring_cqe *cqe)
{
	uint64_t data = io_uring_cqe_get_data64(cqe);
	int op = (int)(data & 0xff);
	uint64_t id = data >> 8;
	bool more = cqe->flags & IORING_CQE_F_MORE;
	Session *s;
	switch (op) {
	case OP_ACCEPT:
		if (cqe->res >= 0)
			on_accept(L, cqe->res);
		else if (cqe->res != -ECANCELED)
			log_warn("accept: %s", strerror(-cqe->res));
		if (!more && !L->stopping)
			arm_accept(L);
		break;
	case OP_RECV:
		s = loop_find(L, id);
		if (s)
			on_recv(L, s, cqe);
		else if (cqe->flags & IORING_CQE_F_BUFFER)
			buf_return(L, cqe->flags >> IORING_CQE_BUFFER_SHIFT);
		break;
	case OP_BELL:
		s = loop_find(L, id);
		if (!s)
			break;
		shm_drain_doorbell(s->shm);
		if (cqe->res >= 0 && (cqe->res & (POLLERR | POLLHUP))) {
			session_close(L, s, NULL); /* the client closed its doorbell end */
			break;
		}
		Task *t = calloc(1, sizeof *t);
		if (t) {
			t->kind = TASK_WAKE;
			t->session_id = s->id;
			queue_push(L->tasks, &t->node);
		}
		if (!more)
			loop_arm_bell(L, s);
		break;
	case OP_RESULTS:
		on_results(L);
		if (!more)
			arm_poll(L, L->results->efd, OP_RESULTS);
		break;
	case OP_SIGNAL:
		on_signal(L);
		if (!more)
			arm_poll(L, L->sig_fd, OP_SIGNAL);
		break;
	case OP_WAKE: /* only failures complete: a full pipe or a gone client */
	default:
		break;
	}
}

int loop_run(Loop *L)
{
	while (!L->stopped) {
		int rc = io_uring_submit_and_wait(&L->ring, 1);
		if (rc < 0 && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY) {
			log_err("io_uring: %s", strerror(-rc));
			begin_stop(L, "io_uring failure");
		}
		struct io_uring_cqe *cqe;
		unsigned head, n = 0;
		io_uring_for_each_cqe(&L->ring, head, cqe) {
			on_cqe(L, cqe);
			n++;
		}
		io_uring_cq_advance(&L->ring, n);
	}
	/* Drain what the engine left behind (replies to sessions about to close). */
	on_results(L);
	for (QNode *n = queue_take(L->tasks), *next; n; n = next) {
		next = n->next;
		Task *t = (Task *)n;
		shm_unref(t->shm);
		free(t->prompt);
		free(t);
	}
	return L->exit_code;
}

/* daemon/loop.h: the loop thread: one io_uring that owns the listening socket, every
 * session's control socket (multishot accept and multishot recvmsg into a provided-buffer
 * ring), every session's submit doorbell (multishot poll), the result queue's eventfd and a
 * signalfd.  It never runs model code; work for the engine goes through the task queue.
 * Everything in Loop and Session belongs to this thread. */
#ifndef QD_DAEMON_LOOP_H
#define QD_DAEMON_LOOP_H

#include <liburing.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include "msg.h"
#include "policy.h"
#include "proto/frame.h"
#include "proto/quantd.pb-c.h"
#include "worker.h"

#define LOOP_BUCKETS 256

/* io_uring user_data: (session id << 8) | op; id 0 for the daemon's own fds. */
enum loop_op { OP_ACCEPT = 1, OP_RECV, OP_BELL, OP_RESULTS, OP_SIGNAL, OP_CANCEL,
	       OP_WAKE };

static inline uint64_t loop_ud(uint64_t id, int op)
{
	return (id << 8) | (uint64_t)op;
}

typedef struct Session {
	struct Session *hnext;
	uint64_t id;
	int fd;
	struct ucred cred;
	bool allowed, hello;
	SessionShm *shm;
	UidUse *use;       /* counts this session while hello is done */
	int n_requests;    /* GENERATE tasks not yet REQ_DONE */
} Session;

typedef struct Loop {
	struct io_uring ring;
	int listen_fd;
	int sig_fd;
	Queue *tasks, *results;
	Worker *worker;
	Policy pol;
	UidUse *uses;
	Session *bucket[LOOP_BUCKETS];
	uint32_t n_sessions;
	uint64_t next_session_id, next_request_id;
	struct io_uring_buf_ring *br;
	uint8_t *bufs;
	bool ready, stopping, stopped;
	int exit_code;
	uint64_t t_start_ns;
	QdArena arena;
	uint8_t arena_buf[QD_ARENA_SIZE];
	uint8_t prompt_buf[QD_REC_MAX];
} Loop;

/* Sets up the ring for LISTEN_FD (already listening) and the signalfd (SIGTERM, SIGINT
 * blocked by the caller).  Returns 0 or -errno. */
int loop_init(Loop *L, int listen_fd, int sig_fd, Queue *tasks, Queue *results);
/* Runs until the engine reports RESULT_STOPPED after a shutdown; returns the exit status
 * (0 after SIGTERM, 1 when the startup models failed to load). */
int loop_run(Loop *L);
void loop_done(Loop *L);

/* session.c */
Session *loop_find(Loop *L, uint64_t id);
void session_close(Loop *L, Session *s, const char *why);
/* Handles one control packet of S (LEN bytes at BUF); may close S. */
void session_on_packet(Loop *L, Session *s, const uint8_t *buf, size_t len);
/* Sends REP (its id already set) on S; closes S when the client does not take it. */
void session_send(Loop *L, Session *s, Quantd__Reply *rep, const int *fds, unsigned nfds);
void session_send_err(Loop *L, Session *s, uint64_t id, int err, const char *msg);
/* A free submission entry (submits what is queued when the SQ is full). */
struct io_uring_sqe *loop_sqe(Loop *L);
/* Arms the multishot poll on S's submit doorbell. */
void loop_arm_bell(Loop *L, Session *s);

#endif

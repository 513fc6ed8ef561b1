/* daemon/queue.h: the two cross-thread queues (loop -> engine tasks, engine -> loop
 * results).  A mutex-protected FIFO of intrusive nodes plus a private eventfd that is
 * written when the queue goes from empty to non-empty, so the consumer can sleep in
 * io_uring (loop) or poll(2) (engine).  Any thread may push; one thread pops. */
#ifndef QD_DAEMON_QUEUE_H
#define QD_DAEMON_QUEUE_H

#include <pthread.h>

typedef struct QNode {
	struct QNode *next;
} QNode;

typedef struct {
	pthread_mutex_t mu;
	QNode *head, **tailp;
	int efd; /* readable while the queue may be non-empty */
} Queue;

/* Returns 0 or -errno. */
int queue_init(Queue *q);
void queue_done(Queue *q); /* the queue must be empty (the owner drains it first) */
void queue_push(Queue *q, QNode *n);
/* Takes everything queued, oldest first (NULL when empty), and resets the eventfd. */
QNode *queue_take(Queue *q);
/* Whether something is queued, without a lock or a system call (the consumer's check on
 * its hot path; the eventfd is left as it is). */
int queue_pending(Queue *q);
/* Resets the eventfd, then says whether something is queued: a consumer about to sleep
 * on the eventfd calls this first and sleeps only on 0, so that a doorbell rung for
 * nodes it already took cannot wake it again and again. */
int queue_rearm(Queue *q);

#endif

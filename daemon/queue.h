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

#endif

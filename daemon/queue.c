/* daemon/queue.c */
#include "queue.h"

#include <errno.h>
#include <stdint.h>
#include <sys/eventfd.h>
#include <unistd.h>

int queue_init(Queue *q)
{
	q->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (q->efd < 0)
		return -errno;
	int rc = pthread_mutex_init(&q->mu, NULL);
	if (rc) {
		close(q->efd);
		return -rc;
	}
	q->head = NULL;
	q->tailp = &q->head;
	return 0;
}

void queue_done(Queue *q)
{
	pthread_mutex_destroy(&q->mu);
	close(q->efd);
}

void queue_push(Queue *q, QNode *n)
{
	n->next = NULL;
	pthread_mutex_lock(&q->mu);
	int was_empty = q->head == NULL;
	if (was_empty) /* read without the lock by queue_pending() */
		__atomic_store_n(&q->head, n, __ATOMIC_RELEASE);
	else
		*q->tailp = n;
	q->tailp = &n->next;
	pthread_mutex_unlock(&q->mu);
	if (was_empty) {
		uint64_t one = 1;
		ssize_t w = write(q->efd, &one, sizeof one);
		(void)w; /* EAGAIN only when the counter is huge: it is readable then anyway */
	}
}

QNode *queue_take(Queue *q)
{
	uint64_t v;
	ssize_t r = read(q->efd, &v, sizeof v); /* reset first: a push after this re-arms it */
	(void)r;
	pthread_mutex_lock(&q->mu);
	QNode *n = q->head;
	__atomic_store_n(&q->head, NULL, __ATOMIC_RELAXED);
	q->tailp = &q->head;
	pthread_mutex_unlock(&q->mu);
	return n;
}

int queue_pending(Queue *q)
{
	return __atomic_load_n(&q->head, __ATOMIC_ACQUIRE) != NULL;
}

int queue_rearm(Queue *q)
{
	uint64_t v;
	ssize_t r = read(q->efd, &v, sizeof v);
	(void)r;
	return queue_pending(q);
}

/* proto/ring.h: one side of a session ring (proto/shm.h), written so that the other side
 * may be hostile.
 *
 * Each side keeps its own index (tail for the producer, head for the consumer) in private
 * memory and only ever stores it into the shared QdRingCtl; the peer's index is loaded
 * once per operation and checked (tail - head <= cap) before it is used.  Records are
 * copied out of shared memory before their header or payload is interpreted, so a peer
 * that rewrites them concurrently can at worst make us read garbage that then fails
 * validation.  A violation returns -EPROTO and leaves our state unchanged; the caller ends
 * the session.
 *
 * Threads: a QdRing is used by one thread at a time (the side's owner). */
#ifndef QD_PROTO_RING_H
#define QD_PROTO_RING_H

#include <stdbool.h>
#include <stdint.h>

#include "shm.h"

typedef struct {
	QdRingCtl *ctl;  /* shared */
	uint8_t *data;   /* shared, cap bytes */
	uint32_t cap;    /* power of two, multiple of 8 */
	uint64_t pos;    /* our own index: tail (producer) or head (consumer) */
} QdRing;

/* Sets up R over CTL and DATA.  Returns 0, or -EINVAL when cap is not a power of two >= 64. */
int qd_ring_init(QdRing *r, QdRingCtl *ctl, void *data, uint32_t cap);

/* Producer: bytes a record of payload length LEN occupies. */
static inline uint64_t qd_ring_rec_size(uint32_t len)
{
	return QD_REC_SIZE(len);
}

/* Producer: free bytes into *ret.  Returns 0, or -EPROTO when the consumer's head is
 * impossible (ahead of our tail or more than cap behind it). */
int qd_ring_free(const QdRing *r, uint64_t *ret);

/* Producer: appends one record whose payload is A (alen bytes) followed by B (blen bytes;
 * B may be NULL when blen is 0), then publishes it.  Returns 0, -EAGAIN when it does not
 * fit now, -EMSGSIZE when alen + blen > QD_REC_MAX or it could never fit, -EPROTO (see
 * qd_ring_free). */
int qd_ring_push(QdRing *r, uint16_t type, const void *a, uint32_t alen, const void *b,
		 uint32_t blen);

/* Consumer: copies the next record's payload into BUF (cap bytes) and its type and length
 * into *ret_type / *ret_len, then releases the space.  Returns 0, -EAGAIN when the ring is
 * empty, -EMSGSIZE when the record is valid but longer than cap (nothing consumed),
 * -EPROTO when the producer's tail or the record header is impossible. */
int qd_ring_pop(QdRing *r, uint16_t *ret_type, void *buf, uint32_t cap, uint32_t *ret_len);

/* Consumer: true when at least one byte is published and not consumed (or the peer's tail
 * is corrupt: qd_ring_pop will say so). */
bool qd_ring_readable(const QdRing *r);

/* Sleeping handshakes (Dekker-style, sequentially consistent on both sides).
 * Consumer: qd_ring_consumer_sleep() sets consumer_sleeping and returns true when the ring
 * is still empty (then block on the doorbell, and call qd_ring_consumer_awake()); false means
 * data arrived meanwhile (the flag is already cleared again).
 * Producer: after pushing, qd_ring_consumer_wants_wake() says whether to ring the doorbell. */
bool qd_ring_consumer_sleep(QdRing *r);
void qd_ring_consumer_awake(QdRing *r);
bool qd_ring_consumer_wants_wake(const QdRing *r);

/* The same for a producer waiting for space: it sets producer_sleeping and returns true
 * when fewer than NEED bytes are still free; the consumer, after popping, asks
 * qd_ring_producer_wants_wake() (which clears the flag) whether to ring the other doorbell. */
bool qd_ring_producer_sleep(QdRing *r, uint64_t need);
void qd_ring_producer_awake(QdRing *r);
bool qd_ring_producer_wants_wake(QdRing *r);

#endif

/* proto/ring.c: single-producer/single-consumer byte rings in shared memory whose peer
 * is not trusted.  See ring.h for the contract and shm.h for the layout. */
#include "ring.h"

#include <errno.h>
#include <string.h>

int qd_ring_init(QdRing *r, QdRingCtl *ctl, void *data, uint32_t cap)
{
	if (!r || !ctl || !data || cap < 64 || (cap & (cap - 1)))
		return -EINVAL;
	r->ctl = ctl;
	r->data = data;
	r->cap = cap;
	r->pos = 0;
	return 0;
}

/* Copies N bytes at ring position POS (wrapping) into DST. */
static void ring_copy_out(const QdRing *r, uint64_t pos, void *dst, uint32_t n)
{
	uint32_t off = (uint32_t)(pos & (r->cap - 1));
	uint32_t first = r->cap - off < n ? r->cap - off : n;
	memcpy(dst, r->data + off, first);
	if (n > first)
		memcpy((uint8_t *)dst + first, r->data, n - first);
}

static void ring_copy_in(QdRing *r, uint64_t pos, const void *src, uint32_t n)
{
	uint32_t off = (uint32_t)(pos & (r->cap - 1));
	uint32_t first = r->cap - off < n ? r->cap - off : n;
	memcpy(r->data + off, src, first);
	if (n > first)
		memcpy(r->data, (const uint8_t *)src + first, n - first);
}

int qd_ring_free(const QdRing *r, uint64_t *ret)
{
	/* Acquire: the consumer's copies out of the space it released happen before we
	 * overwrite that space. */
	uint64_t head = atomic_load_explicit(&r->ctl->head, memory_order_acquire);
	uint64_t used = r->pos - head; /* huge when head > pos: caught below */
	if (used > r->cap)
		return -EPROTO;
	*ret = r->cap - used;
	return 0;
}

int qd_ring_push(QdRing *r, uint16_t type, const void *a, uint32_t alen, const void *b,
		 uint32_t blen)
{
	if ((uint64_t)alen + blen > QD_REC_MAX)
		return -EMSGSIZE;
	uint32_t len = alen + blen;
	uint64_t need = QD_REC_SIZE(len);
	if (need > r->cap)
		return -EMSGSIZE;
	uint64_t avail;
	int rc = qd_ring_free(r, &avail);
	if (rc < 0)
		return rc;
	if (need > avail)
		return -EAGAIN;
	QdRecHdr h = { .len = len, .type = type, .flags = 0 };
	uint64_t p = r->pos;
	ring_copy_in(r, p, &h, sizeof h);
	p += sizeof h;
	if (alen)
		ring_copy_in(r, p, a, alen);
	if (blen)
		ring_copy_in(r, p + alen, b, blen);
	uint32_t pad = (uint32_t)(need - sizeof h - len);
	if (pad) {
		static const uint8_t zero[8];
		ring_copy_in(r, p + len, zero, pad);
	}
	r->pos += need;
	atomic_store_explicit(&r->ctl->tail, r->pos, memory_order_release);
	return 0;
}

int qd_ring_pop(QdRing *r, uint16_t *ret_type, void *buf, uint32_t cap, uint32_t *ret_len)
{
	uint64_t tail = atomic_load_explicit(&r->ctl->tail, memory_order_acquire);
	uint64_t avail = tail - r->pos;
	if (avail > r->cap)
		return -EPROTO;
	if (avail == 0)
		return -EAGAIN;
	/* The producer publishes whole, 8-aligned records only. */
	if (avail < sizeof(QdRecHdr) || (avail & (QD_REC_ALIGN - 1)))
		return -EPROTO;
	QdRecHdr h;
	ring_copy_out(r, r->pos, &h, sizeof h); /* copy first, then look */
	if (h.len > QD_REC_MAX || QD_REC_SIZE(h.len) > avail)
		return -EPROTO;
	if (h.len > cap)
		return -EMSGSIZE;
	ring_copy_out(r, r->pos + sizeof h, buf, h.len);
	r->pos += QD_REC_SIZE(h.len);
	atomic_store_explicit(&r->ctl->head, r->pos, memory_order_release);
	*ret_type = h.type;
	*ret_len = h.len;
	return 0;
}

bool qd_ring_readable(const QdRing *r)
{
	return atomic_load_explicit(&r->ctl->tail, memory_order_acquire) != r->pos;
}

bool qd_ring_consumer_sleep(QdRing *r)
{
	atomic_store_explicit(&r->ctl->consumer_sleeping, 1, memory_order_seq_cst);
	if (atomic_load_explicit(&r->ctl->tail, memory_order_seq_cst) == r->pos)
		return true;
	atomic_store_explicit(&r->ctl->consumer_sleeping, 0, memory_order_relaxed);
	return false;
}

void qd_ring_consumer_awake(QdRing *r)
{
	atomic_store_explicit(&r->ctl->consumer_sleeping, 0, memory_order_relaxed);
}

bool qd_ring_consumer_wants_wake(const QdRing *r)
{
	atomic_thread_fence(memory_order_seq_cst);
	return atomic_load_explicit(&r->ctl->consumer_sleeping, memory_order_relaxed) != 0;
}

bool qd_ring_producer_sleep(QdRing *r, uint64_t need)
{
	atomic_store_explicit(&r->ctl->producer_sleeping, 1, memory_order_seq_cst);
	uint64_t head = atomic_load_explicit(&r->ctl->head, memory_order_seq_cst);
	uint64_t used = r->pos - head;
	if (used > r->cap || r->cap - used < need)
		return true; /* a corrupt head also waits: the next push reports it */
	atomic_store_explicit(&r->ctl->producer_sleeping, 0, memory_order_relaxed);
	return false;
}

void qd_ring_producer_awake(QdRing *r)
{
	atomic_store_explicit(&r->ctl->producer_sleeping, 0, memory_order_relaxed);
}

bool qd_ring_producer_wants_wake(QdRing *r)
{
	atomic_thread_fence(memory_order_seq_cst);
	if (!atomic_load_explicit(&r->ctl->producer_sleeping, memory_order_relaxed))
		return false;
	atomic_store_explicit(&r->ctl->producer_sleeping, 0, memory_order_relaxed);
	return true;
}

/* tests/daemon/test-ring.c: the session rings and control framing against a hostile
 * peer: impossible indices and lengths, wraparound, full and empty rings, two processes
 * through a real sealed memfd, and the seals holding in the receiver. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "daemon/shm.h"
#include "proto/frame.h"
#include "proto/quantd.pb-c.h"
#include "proto/ring.h"
#include "tests/testutil.h"

#define CAP 4096u

typedef struct {
	QdRingCtl ctl;
	uint8_t data[CAP];
	QdRing prod, cons;
} Pair;

static Pair *pair_new(void)
{
	Pair *p = aligned_alloc(64, sizeof(Pair));
	memset(p, 0, sizeof *p);
	CU_ASSERT_EQUAL(qd_ring_init(&p->prod, &p->ctl, p->data, CAP), 0);
	CU_ASSERT_EQUAL(qd_ring_init(&p->cons, &p->ctl, p->data, CAP), 0);
	return p;
}

static void test_init_rejects_bad_cap(void)
{
	QdRingCtl ctl;
	uint8_t d[128];
	QdRing r;
	CU_ASSERT_EQUAL(qd_ring_init(&r, &ctl, d, 96), -EINVAL);
	CU_ASSERT_EQUAL(qd_ring_init(&r, &ctl, d, 32), -EINVAL);
	CU_ASSERT_EQUAL(qd_ring_init(&r, &ctl, d, 128), 0);
}

/* Random record sizes through many wraparounds, producer and consumer interleaved at
 * random; every byte checked on the way out. */
static void test_roundtrip_wraparound(void)
{
	Pair *p = pair_new();
	uint64_t rs = 42;
	uint8_t in[1000], out[1000];
	uint32_t lens[1024]; /* lengths in flight: at most CAP / 8 records */
	int pushed = 0, popped = 0, full = 0, bad = 0;
	for (int round = 0; round < 40000; round++) {
		if (tu_rand_u64(&rs) % 2) {
			uint32_t len = (uint32_t)(tu_rand_u64(&rs) % sizeof in);
			for (uint32_t i = 0; i < len; i++)
				in[i] = (uint8_t)(pushed * 7 + i);
			int rc = qd_ring_push(&p->prod, QD_REC_TOKEN, in, len / 2, in + len / 2,
					      len - len / 2);
			if (rc == -EAGAIN) {
				full++;
				continue;
			}
			CU_ASSERT_EQUAL_FATAL(rc, 0);
			lens[pushed++ % 1024] = len;
		} else {
			uint16_t type;
			uint32_t got;
			int rc = qd_ring_pop(&p->cons, &type, out, sizeof out, &got);
			if (rc == -EAGAIN) {
				CU_ASSERT_EQUAL(pushed, popped);
				continue;
			}
			CU_ASSERT_EQUAL_FATAL(rc, 0);
			CU_ASSERT_EQUAL_FATAL(got, lens[popped % 1024]);
			CU_ASSERT_EQUAL(type, QD_REC_TOKEN);
			for (uint32_t i = 0; i < got; i++)
				bad += out[i] != (uint8_t)(popped * 7 + i);
			popped++;
		}
	}
	CU_ASSERT_EQUAL(bad, 0);
	CU_ASSERT(pushed > 1000);
	CU_ASSERT(full > 0);                 /* the full case was exercised */
	CU_ASSERT(p->prod.pos > 4ull * CAP); /* wrapped many times */
	free(p);
}

static void test_full_and_empty(void)
{
	Pair *p = pair_new();
	uint8_t buf[CAP];
	uint16_t type;
	uint32_t len;
	CU_ASSERT_EQUAL(qd_ring_pop(&p->cons, &type, buf, sizeof buf, &len), -EAGAIN);
	CU_ASSERT_FALSE(qd_ring_readable(&p->cons));
	/* 8-byte header + 56 bytes = 64 per record: exactly 64 fit */
	memset(buf, 0xab, sizeof buf);
	int n = 0;
	while (qd_ring_push(&p->prod, 1, buf, 56, NULL, 0) == 0)
		n++;
	CU_ASSERT_EQUAL(n, CAP / 64);
	uint64_t fr = 1;
	CU_ASSERT_EQUAL(qd_ring_free(&p->prod, &fr), 0);
	CU_ASSERT_EQUAL(fr, 0);
	CU_ASSERT_EQUAL(qd_ring_push(&p->prod, 1, NULL, 0, NULL, 0), -EAGAIN);
	CU_ASSERT_EQUAL(qd_ring_push(&p->prod, 1, buf, CAP, NULL, 0), -EMSGSIZE);
	CU_ASSERT_EQUAL(qd_ring_push(&p->prod, 1, buf, QD_REC_MAX, buf, 1), -EMSGSIZE);
	CU_ASSERT_TRUE(qd_ring_readable(&p->cons));
	/* a too-small buffer consumes nothing */
	CU_ASSERT_EQUAL(qd_ring_pop(&p->cons, &type, buf, 10, &len), -EMSGSIZE);
	for (int i = 0; i < n; i++)
		CU_ASSERT_EQUAL(qd_ring_pop(&p->cons, &type, buf, sizeof buf, &len), 0);
	CU_ASSERT_EQUAL(qd_ring_pop(&p->cons, &type, buf, sizeof buf, &len), -EAGAIN);
	free(p);
}

/* A hostile producer: the consumer must refuse every impossible tail and header and stay
 * where it was. */
static void test_hostile_producer(void)
{
	Pair *p = pair_new();
	uint8_t buf[CAP];
	uint16_t type;
	uint32_t len;
	uint8_t x[16] = { 0 };
	CU_ASSERT_EQUAL(qd_ring_push(&p->prod, 1, x, 16, NULL, 0), 0);
	CU_ASSERT_EQUAL(qd_ring_pop(&p->cons, &type, buf, sizeof buf, &len), 0);
	uint64_t base = p->cons.pos;

	uint64_t bad_tails[] = { base - 8, base + CAP + 8, base + 3, base + 4, UINT64_MAX };
	for (size_t i = 0; i < sizeof bad_tails / sizeof *bad_tails; i++) {
		atomic_store(&p->ctl.tail, bad_tails[i]);
		CU_ASSERT_EQUAL(qd_ring_pop(&p->cons, &type, buf, sizeof buf, &len), -EPROTO);
		CU_ASSERT_EQUAL(p->cons.pos, base);
	}
	/* header claims more than is published, or more than any record may hold */
	uint32_t bad_lens[] = { 64, CAP, QD_REC_MAX + 1, UINT32_MAX, UINT32_MAX - 6 };
	for (size_t i = 0; i < sizeof bad_lens / sizeof *bad_lens; i++) {
		QdRecHdr h = { .len = bad_lens[i], .type = 1 };
		memcpy(p->data + (base & (CAP - 1)), &h, sizeof h);
		atomic_store(&p->ctl.tail, base + 32);
		CU_ASSERT_EQUAL(qd_ring_pop(&p->cons, &type, buf, sizeof buf, &len), -EPROTO);
		CU_ASSERT_EQUAL(p->cons.pos, base);
	}
	/* a header that wraps around the end is fine when its length is honest */
	p->cons.pos = CAP - 8;
	QdRecHdr h = { .len = 20, .type = 2 };
	memcpy(p->data + CAP - 8, &h, sizeof h);
	memcpy(p->data, "0123456789abcdefghij", 20);
	atomic_store(&p->ctl.tail, CAP - 8 + QD_REC_SIZE(20));
	CU_ASSERT_EQUAL(qd_ring_pop(&p->cons, &type, buf, sizeof buf, &len), 0);
	CU_ASSERT_EQUAL(len, 20);
	CU_ASSERT_EQUAL(type, 2);
	CU_ASSERT_EQUAL(memcmp(buf, "0123456789abcdefghij", 20), 0);
	CU_ASSERT_EQUAL(atomic_load(&p->ctl.head), CAP - 8 + QD_REC_SIZE(20));
	free(p);
}

/* A hostile consumer: the producer refuses to write when head is impossible. */
static void test_hostile_consumer(void)
{
	Pair *p = pair_new();
	uint8_t x[24] = { 0 };
	CU_ASSERT_EQUAL(qd_ring_push(&p->prod, 1, x, 24, NULL, 0), 0);
	uint64_t t = p->prod.pos;
	uint64_t bad_heads[] = { t + 8, t - CAP - 8, t + (1ull << 63) };
	for (size_t i = 0; i < sizeof bad_heads / sizeof *bad_heads; i++) {
		atomic_store(&p->ctl.head, bad_heads[i]);
		CU_ASSERT_EQUAL(qd_ring_push(&p->prod, 1, x, 8, NULL, 0), -EPROTO);
		uint64_t fr;
		CU_ASSERT_EQUAL(qd_ring_free(&p->prod, &fr), -EPROTO);
		CU_ASSERT_EQUAL(p->prod.pos, t);
	}
	/* the producer never reads its own tail back: a consumer scribbling on it is ignored */
	atomic_store(&p->ctl.head, t);
	atomic_store(&p->ctl.tail, 12345);
	CU_ASSERT_EQUAL(qd_ring_push(&p->prod, 1, x, 8, NULL, 0), 0);
	CU_ASSERT_EQUAL(atomic_load(&p->ctl.tail), t + 16);
	free(p);
}

static void test_sleep_handshake(void)
{
	Pair *p = pair_new();
	CU_ASSERT_TRUE(qd_ring_consumer_sleep(&p->cons));
	CU_ASSERT_TRUE(qd_ring_consumer_wants_wake(&p->prod));
	qd_ring_consumer_awake(&p->cons);
	CU_ASSERT_FALSE(qd_ring_consumer_wants_wake(&p->prod));
	uint8_t x[8] = { 0 };
	CU_ASSERT_EQUAL(qd_ring_push(&p->prod, 1, x, 8, NULL, 0), 0);
	CU_ASSERT_FALSE(qd_ring_consumer_sleep(&p->cons)); /* data is there: do not block */
	CU_ASSERT_FALSE(qd_ring_consumer_wants_wake(&p->prod));
	CU_ASSERT_FALSE(qd_ring_producer_sleep(&p->prod, 64));
	CU_ASSERT_TRUE(qd_ring_producer_sleep(&p->prod, CAP));
	CU_ASSERT_TRUE(qd_ring_producer_wants_wake(&p->cons));
	CU_ASSERT_FALSE(qd_ring_producer_wants_wake(&p->cons)); /* cleared by the first ask */
	free(p);
}

/* Two processes: the parent creates the session shm as the daemon does and passes it with
 * SCM_RIGHTS; the child maps it, checks it cannot resize it, and produces records into the
 * submit ring with doorbells; the parent consumes them. */
#define N_MSGS 20000

static int child_main(int sock)
{
	uint8_t buf[QD_MSG_MAX];
	int fds[QD_MSG_FDS];
	size_t len;
	unsigned nfds;
	if (qd_frame_recv(sock, buf, sizeof buf, &len, fds, QD_MSG_FDS, &nfds) < 0 || nfds != 3)
		return 10;
	if (fcntl(fds[0], F_GETFD) != FD_CLOEXEC)
		return 11;
	int seals = fcntl(fds[0], F_GET_SEALS);
	if (!(seals & F_SEAL_SHRINK) || !(seals & F_SEAL_GROW) || !(seals & F_SEAL_SEAL))
		return 12;
	if (ftruncate(fds[0], 4096) == 0 || errno != EPERM)
		return 13;
	if (ftruncate(fds[0], 2 * (off_t)QD_SHM_SIZE) == 0 || errno != EPERM)
		return 14;
	if (fcntl(fds[0], F_ADD_SEALS, F_SEAL_WRITE) == 0 || errno != EPERM)
		return 15;
	uint8_t *m = mmap(NULL, QD_SHM_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fds[0], 0);
	if (m == MAP_FAILED)
		return 16;
	QdShmHeader h;
	memcpy(&h, m, sizeof h);
	if (h.magic != QD_SHM_MAGIC || h.abi_version != QD_ABI_VERSION || h.size != QD_SHM_SIZE)
		return 17;
	QdRing sub;
	qd_ring_init(&sub, (QdRingCtl *)(m + QD_SHM_SUBMIT_CTL), m + QD_SHM_SUBMIT_DATA,
		     QD_SUBMIT_CAP);
	for (uint32_t i = 0; i < N_MSGS; i++) {
		uint32_t payload[64];
		uint32_t n = 1 + i % 64;
		for (uint32_t k = 0; k < n; k++)
			payload[k] = i ^ k;
		int rc;
		while ((rc = qd_ring_push(&sub, QD_REC_PROMPT_TOKENS, payload, n * 4, NULL, 0)) ==
		       -EAGAIN)
			usleep(10);
		if (rc < 0)
			return 20;
		if (i % 97 == 0 || i == N_MSGS - 1) {
			char one = 1;
			if (write(fds[1], &one, 1) < 0 && errno != EAGAIN)
				return 21;
		}
	}
	munmap(m, QD_SHM_SIZE);
	return 0;
}

static void test_two_processes_sealed_memfd(void)
{
	int sv[2];
	CU_ASSERT_EQUAL_FATAL(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv), 0);
	SessionShm *s = NULL;
	CU_ASSERT_EQUAL_FATAL(shm_new(&s), 0);
	pid_t pid = fork();
	CU_ASSERT_FATAL(pid >= 0);
	if (pid == 0) {
		close(sv[0]);
		_exit(child_main(sv[1]));
	}
	close(sv[1]);
	Quantd__Welcome w = QUANTD__WELCOME__INIT;
	w.abi_version = QD_ABI_VERSION;
	int fds[3] = { s->memfd, s->client_fds[0], s->client_fds[1] };
	CU_ASSERT_EQUAL(qd_frame_send(sv[0], &w.base, fds, 3), 0);
	shm_drop_client_fds(s);

	uint32_t got = 0;
	uint8_t buf[512];
	int bad = 0;
	while (got < N_MSGS) {
		uint16_t type;
		uint32_t len;
		int rc = qd_ring_pop(&s->submit, &type, buf, sizeof buf, &len);
		if (rc == -EAGAIN) {
			usleep(20);
			shm_drain_doorbell(s);
			continue;
		}
		if (rc < 0) {
			bad++;
			break;
		}
		uint32_t n = 1 + got % 64;
		uint32_t v[64];
		memcpy(v, buf, len);
		if (type != QD_REC_PROMPT_TOKENS || len != n * 4)
			bad++;
		else
			for (uint32_t k = 0; k < n; k++)
				if (v[k] != (got ^ k))
					bad++;
		got++;
	}
	CU_ASSERT_EQUAL(bad, 0);
	CU_ASSERT_EQUAL(got, N_MSGS);
	int st = -1;
	waitpid(pid, &st, 0);
	CU_ASSERT_TRUE(WIFEXITED(st));
	CU_ASSERT_EQUAL(WEXITSTATUS(st), 0);
	/* the daemon's own size is intact after the child's attempts */
	struct stat sb;
	CU_ASSERT_EQUAL(fstat(s->memfd, &sb), 0);
	CU_ASSERT_EQUAL((uint64_t)sb.st_size, QD_SHM_SIZE);
	shm_unref(s);
	close(sv[0]);
}

static void test_frame_limits(void)
{
	int sv[2];
	CU_ASSERT_EQUAL_FATAL(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv), 0);
	uint8_t big[QD_MSG_MAX + 100], buf[QD_MSG_MAX];
	memset(big, 0x55, sizeof big);
	size_t len;
	unsigned nfds;
	int fds[QD_MSG_FDS];
	/* oversized packet: MSG_TRUNC is reported, not a silently cut message */
	CU_ASSERT_EQUAL(send(sv[1], big, sizeof big, 0), (ssize_t)sizeof big);
	CU_ASSERT_EQUAL(qd_frame_recv(sv[0], buf, sizeof buf, &len, fds, 0, &nfds), -EMSGSIZE);
	/* descriptors nobody asked for are closed and refused */
	Quantd__Request rq = QUANTD__REQUEST__INIT;
	rq.id = 7;
	int pfd[2];
	CU_ASSERT_EQUAL_FATAL(pipe(pfd), 0);
	CU_ASSERT_EQUAL(qd_frame_send(sv[1], &rq.base, pfd, 2), 0);
	CU_ASSERT_EQUAL(qd_frame_recv(sv[0], buf, sizeof buf, &len, fds, 0, &nfds), -EPROTO);
	/* a good packet round-trips through the bounded arena */
	Quantd__Cancel c = QUANTD__CANCEL__INIT;
	c.request_id = 99;
	rq.body_case = QUANTD__REQUEST__BODY_CANCEL;
	rq.cancel = &c;
	CU_ASSERT_EQUAL(qd_frame_send(sv[1], &rq.base, NULL, 0), 0);
	CU_ASSERT_EQUAL(qd_frame_recv(sv[0], buf, sizeof buf, &len, fds, 0, &nfds), 0);
	static uint8_t abuf[QD_ARENA_SIZE];
	QdArena a;
	qd_arena_init(&a, abuf, sizeof abuf);
	Quantd__Request *r = (Quantd__Request *)qd_frame_unpack(&quantd__request__descriptor, &a,
								  buf, len);
	CU_ASSERT_PTR_NOT_NULL_FATAL(r);
	CU_ASSERT_EQUAL(r->id, 7);
	CU_ASSERT_EQUAL(r->body_case, QUANTD__REQUEST__BODY_CANCEL);
	CU_ASSERT_EQUAL(r->cancel->request_id, 99);
	/* garbage and truncated encodings are refused, never crash */
	uint64_t rs = 5;
	int accepted = 0;
	for (int i = 0; i < 20000; i++) {
		size_t n = tu_rand_u64(&rs) % 64;
		for (size_t k = 0; k < n; k++)
			big[k] = (uint8_t)tu_rand_u64(&rs);
		qd_arena_reset(&a);
		if (qd_frame_unpack(&quantd__request__descriptor, &a, big, n))
			accepted++;
	}
	CU_ASSERT(accepted < 20000);
	qd_arena_reset(&a);
	CU_ASSERT_PTR_NULL(qd_frame_unpack(&quantd__request__descriptor, &a, buf, len - 1));
	/* a message whose decoded form exceeds the arena is refused: many repeated strings */
	Quantd__Generate g = QUANTD__GENERATE__INIT;
	char *stops[4000];
	for (int i = 0; i < 4000; i++)
		stops[i] = "";
	g.n_stop = 4000;
	g.stop = stops;
	rq.body_case = QUANTD__REQUEST__BODY_GENERATE;
	rq.generate = &g;
	size_t plen = protobuf_c_message_get_packed_size(&rq.base);
	CU_ASSERT(plen < QD_MSG_MAX);
	protobuf_c_message_pack(&rq.base, big);
	uint8_t small_arena[4096];
	qd_arena_init(&a, small_arena, sizeof small_arena);
	CU_ASSERT_PTR_NULL(qd_frame_unpack(&quantd__request__descriptor, &a, big, plen));
	/* end of stream */
	close(sv[1]);
	CU_ASSERT_EQUAL(qd_frame_recv(sv[0], buf, sizeof buf, &len, fds, 0, &nfds), -ECONNRESET);
	close(sv[0]);
}

int main(void)
{
	signal(SIGPIPE, SIG_IGN);
	static const TuTest tests[] = {
		{ .name = "init rejects bad capacity", .fn = test_init_rejects_bad_cap },
		{ .name = "round trip with wraparound", .fn = test_roundtrip_wraparound },
		{ .name = "full and empty", .fn = test_full_and_empty },
		{ .name = "hostile producer", .fn = test_hostile_producer },
		{ .name = "hostile consumer", .fn = test_hostile_consumer },
		{ .name = "sleep handshake", .fn = test_sleep_handshake },
		{ .name = "two processes, sealed memfd", .fn = test_two_processes_sealed_memfd },
		{ .name = "frame limits", .fn = test_frame_limits },
		{ .name = NULL },
	};
	return tu_main("ring", tests);
}

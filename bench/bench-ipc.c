/* bench/bench-ipc.c: token delivery latency through the real session rings between two
 * processes, next to the same records sent over a Unix SOCK_SEQPACKET socket.
 *
 * A producer process plays the engine: each step it writes one QdTokenRec (stamped with
 * CLOCK_MONOTONIC) into every client's complete ring and rings the doorbell of clients that
 * sleep, exactly as daemon/sched.c does; each client process reads the way libquantd's
 * qd_next() does (a short spin, then the sleep handshake and a poll on the doorbell pipe)
 * and records now - stamp.  Reported: p50/p99/max over 100k tokens for 1 and 32 clients,
 * and the producer's own cost per token (ring write + wake).
 * Usage: bench-ipc [tokens [spin_us]]. */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "daemon/shm.h"
#include "proto/ring.h"

static uint64_t spin_ns = 20000;

static uint64_t now_ns_(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void sleep_until(uint64_t t)
{
	struct timespec ts = { (time_t)(t / 1000000000ull), (long)(t % 1000000000ull) };
	while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
		;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

/* Client side of the rings: N records, latencies into LAT (shared memory). */
static void ring_client(SessionShm *s, int n, uint64_t *lat)
{
	QdRing r;
	qd_ring_init(&r, s->complete.ctl, s->complete.data, QD_COMPLETE_CAP);
	int rd = s->client_fds[1];
	uint8_t buf[sizeof(QdTokenRec) + QD_PIECE_MAX];
	unsigned misses = 0; /* adaptive spin, as in libquantd */
	for (int i = 0; i < n;) {
		uint16_t type;
		uint32_t len;
		int rc = qd_ring_pop(&r, &type, buf, sizeof buf, &len);
		if (rc == 0) {
			QdTokenRec t;
			memcpy(&t, buf, sizeof t);
			lat[i++] = now_ns_() - t.t_ns;
			continue;
		}
		if (rc != -EAGAIN)
			_exit(2);
		if (misses < 2 || (misses & 15) == 0) {
			uint64_t t0 = now_ns_();
			while (!qd_ring_readable(&r) && now_ns_() - t0 < spin_ns)
				__builtin_ia32_pause();
			if (qd_ring_readable(&r)) {
				misses = 0;
				continue;
			}
		}
		misses++;
		if (qd_ring_consumer_sleep(&r)) {
			struct pollfd p = { .fd = rd, .events = POLLIN };
			poll(&p, 1, 1000);
			char d[64];
			while (read(rd, d, sizeof d) == (ssize_t)sizeof d)
				;
			qd_ring_consumer_awake(&r);
		}
	}
}

static void sock_client(int fd, int n, uint64_t *lat)
{
	uint8_t buf[sizeof(QdTokenRec) + QD_PIECE_MAX];
	for (int i = 0; i < n;) {
		ssize_t k = recv(fd, buf, sizeof buf, 0);
		if (k < (ssize_t)sizeof(QdTokenRec))
			_exit(3);
		QdTokenRec t;
		memcpy(&t, buf, sizeof t);
		lat[i++] = now_ns_() - t.t_ns;
	}
}

typedef struct {
	double p50, p99, max, prod_ns;
} Result;

/* One run: NC clients, TOTAL tokens in all, one step every STEP_NS. */
static int run(int nc, int total, uint64_t step_ns, bool use_socket, Result *res)
{
	int per = total / nc;
	size_t lat_bytes = sizeof(uint64_t) * (size_t)per * (size_t)nc;
	uint64_t *lat = mmap(NULL, lat_bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	SessionShm **s = calloc((size_t)nc, sizeof *s);
	int (*sv)[2] = calloc((size_t)nc, sizeof *sv);
	pid_t *kids = calloc((size_t)nc, sizeof *kids);
	if (lat == MAP_FAILED || !s || !sv || !kids)
		return -ENOMEM;
	for (int c = 0; c < nc; c++) {
		if (use_socket) {
			if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv[c]) < 0)
				return -errno;
			int sz = 1 << 20;
			setsockopt(sv[c][0], SOL_SOCKET, SO_SNDBUF, &sz, sizeof sz);
		} else if (shm_new(&s[c]) < 0) {
			return -ENOMEM;
		}
		kids[c] = fork();
		if (kids[c] == 0) {
			if (use_socket)
				sock_client(sv[c][1], per, lat + (size_t)c * per);
			else
				ring_client(s[c], per, lat + (size_t)c * per);
			_exit(0);
		}
	}
	usleep(100000); /* let the clients reach their wait */
	uint8_t piece[8] = "token ";
	uint64_t prod = 0, t_next = now_ns_();
	for (int i = 0; i < per; i++) {
		t_next += step_ns;
		sleep_until(t_next);
		uint64_t t0 = now_ns_();
		for (int c = 0; c < nc; c++) {
			QdTokenRec t = { .request_id = 1, .t_ns = now_ns_(), .token = i, .index = (uint32_t)i,
					 .piece_len = 6 };
			if (use_socket) {
				uint8_t b[sizeof t + 6];
				memcpy(b, &t, sizeof t);
				memcpy(b + sizeof t, piece, 6);
				if (send(sv[c][0], b, sizeof b, MSG_NOSIGNAL) < 0)
					return -errno;
			} else {
				while (qd_ring_push(&s[c]->complete, QD_REC_TOKEN, &t, sizeof t, piece, 6) ==
				       -EAGAIN)
					;
				shm_wake_client(s[c]);
			}
		}
		prod += now_ns_() - t0;
	}
	int bad = 0;
	for (int c = 0; c < nc; c++) {
		int st;
		waitpid(kids[c], &st, 0);
		bad += !WIFEXITED(st) || WEXITSTATUS(st) != 0;
		if (use_socket) {
			close(sv[c][0]);
			close(sv[c][1]);
		} else {
			shm_unref(s[c]);
		}
	}
	size_t n = (size_t)per * (size_t)nc;
	qsort(lat, n, sizeof *lat, cmp_u64);
	res->p50 = lat[n / 2] / 1e3;
	res->p99 = lat[n * 99 / 100] / 1e3;
	res->max = lat[n - 1] / 1e3;
	res->prod_ns = (double)prod / (double)n;
	munmap(lat, lat_bytes);
	free(s);
	free(sv);
	free(kids);
	return bad ? -EIO : 0;
}

int main(int argc, char **argv)
{
	int total = argc > 1 ? atoi(argv[1]) : 100000;
	if (argc > 2)
		spin_ns = strtoull(argv[2], NULL, 10) * 1000;
	signal(SIGPIPE, SIG_IGN);
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	printf("bench-ipc: %d tokens per run, %ld CPUs, client spin up to %llu us (adaptive) then "
	       "sleep\n", total, ncpu, (unsigned long long)(spin_ns / 1000));
	printf("%-8s %-8s %10s %10s %10s %10s %14s\n", "path", "clients", "step_us", "p50_us",
	       "p99_us", "max_us", "producer_ns/tok");
	static const struct { int nc; uint64_t step; } cfg[] = { { 1, 100000 }, { 32, 2000000 } };
	for (size_t k = 0; k < sizeof cfg / sizeof *cfg; k++)
		for (int sock = 0; sock < 2; sock++) {
			Result r;
			int rc = run(cfg[k].nc, total, cfg[k].step, sock, &r);
			if (rc < 0) {
				printf("%-8s %-8d failed: %s\n", sock ? "socket" : "ring", cfg[k].nc,
				       strerror(-rc));
				continue;
			}
			printf("%-8s %-8d %10.0f %10.2f %10.2f %10.2f %14.0f\n", sock ? "socket" : "ring",
			       cfg[k].nc, cfg[k].step / 1e3, r.p50, r.p99, r.max, r.prod_ns);
			fflush(stdout);
		}
	return 0;
}

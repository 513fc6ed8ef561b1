/* daemon/serve.c: `quantd serve`: options, the control socket (ours or systemd's), the
 * systemd notification protocol, and the two threads.  The main thread becomes the loop
 * thread; the engine thread is started by worker_start(). */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include "log.h"
#include "loop.h"
#include "worker.h"

#define DEFAULT_SOCKET "/run/quantd/quantd.sock"
#define MAX_MODELS 16

static void usage(FILE *f)
{
	fprintf(f,
		"usage: quantd serve -m MODEL [-m MODEL2 ...] [options]\n"
		"  -m, --model [NAME=]PATH  load a GGUF model at start (repeatable; default $QUANTD_MODELS,\n"
		"                           colon-separated)\n"
		"  --socket PATH            control socket (default $QUANTD_SOCKET or " DEFAULT_SOCKET ");\n"
		"                           ignored when systemd passes a socket\n"
		"  --backend cpu|cuda|auto  compute backend (default auto: the GPU when usable)\n"
		"  --device N               GPU index for cuda/auto (default 0)\n"
		"  --wake inline|batch      who rings sleeping clients: the engine thread per token\n"
		"                           (default; lowest latency), or the loop thread once per\n"
		"                           step (least engine-thread work, later tokens)\n"
		"  --slots N                sequences decoded together per model (default 16)\n"
		"  --ctx N                  positions per sequence (default: model's, at most 4096)\n"
		"  --batch N                tokens per forward pass (default 256)\n"
		"  --threads N              engine threads (default: all CPUs)\n"
		"  --queue N                requests waiting per model before 'busy' (default 64)\n"
		"  --max-tokens N           most tokens per request (default 4096)\n"
		"  --mem-limit SIZE         memory all models may take, e.g. 8G (default: what is free)\n"
		"  --allow-uid U, --allow-gid G   who may connect (default: whoever the socket admits)\n"
		"  --admin-uid U            who may load and unload models (root and our uid always)\n"
		"  --max-sessions-per-uid N, --max-requests-per-uid N, --max-tokens-per-uid N\n"
		"  -v, --verbose            debug logging\n");
}

static int parse_size(const char *s, uint64_t *ret)
{
	char *end;
	errno = 0;
	double v = strtod(s, &end);
	if (end == s || errno || v < 0)
		return -EINVAL;
	uint64_t mul = 1;
	switch (*end) {
	case 'k': case 'K': mul = 1ull << 10; end++; break;
	case 'm': case 'M': mul = 1ull << 20; end++; break;
	case 'g': case 'G': mul = 1ull << 30; end++; break;
	case 't': case 'T': mul = 1ull << 40; end++; break;
	}
	if (*end == 'i' || *end == 'B')
		end += *end == 'i' && end[1] == 'B' ? 2 : 1;
	if (*end)
		return -EINVAL;
	*ret = (uint64_t)(v * (double)mul);
	return 0;
}

static int parse_int(const char *s, int lo, int hi, int *ret)
{
	char *end;
	errno = 0;
	long v = strtol(s, &end, 10);
	if (!*s || *end || errno || v < lo || v > hi)
		return -EINVAL;
	*ret = (int)v;
	return 0;
}

/* Our own socket: refuse to steal a live daemon's path, replace a stale one, and create
 * it with mode 0660 from the start (umask) instead of chmod after bind. */
static int open_socket(const char *path)
{
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	if (strlen(path) >= sizeof a.sun_path) {
		log_err("socket path too long: %s", path);
		return -ENAMETOOLONG;
	}
	strcpy(a.sun_path, path);
	int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return -errno;
	struct stat st;
	if (lstat(path, &st) == 0) {
		if (!S_ISSOCK(st.st_mode)) {
			log_err("%s exists and is not a socket", path);
			close(fd);
			return -EEXIST;
		}
		int probe = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
		if (probe >= 0 && connect(probe, (struct sockaddr *)&a, sizeof a) == 0) {
			close(probe);
			close(fd);
			log_err("another daemon is listening on %s", path);
			return -EADDRINUSE;
		}
		if (probe >= 0)
			close(probe);
		unlink(path);
	}
	mode_t old = umask(0117);
	int rc = bind(fd, (struct sockaddr *)&a, sizeof a);
	umask(old);
	if (rc < 0 || listen(fd, 256) < 0) {
		rc = -errno;
		log_err("cannot listen on %s: %s", path, strerror(-rc));
		close(fd);
		return rc;
	}
	return fd;
}

static int systemd_socket(void)
{
	int n = sd_listen_fds(1);
	if (n <= 0)
		return n == 0 ? -ENOENT : n;
	int fd = SD_LISTEN_FDS_START;
	for (int i = 1; i < n; i++)
		close(SD_LISTEN_FDS_START + i);
	if (sd_is_socket_unix(fd, SOCK_SEQPACKET, 1, NULL, 0) <= 0) {
		log_err("the socket systemd passed is not a listening AF_UNIX SOCK_SEQPACKET socket");
		return -EINVAL;
	}
	return fd;
}

enum {
	OPT_SOCKET = 256, OPT_BACKEND, OPT_SLOTS, OPT_CTX, OPT_BATCH, OPT_THREADS, OPT_DEVICE, OPT_WAKE, OPT_QUEUE,
	OPT_MAX_TOKENS, OPT_MEM_LIMIT, OPT_ALLOW_UID, OPT_ALLOW_GID, OPT_ADMIN_UID, OPT_SESS_UID,
	OPT_REQ_UID, OPT_TOK_UID,
};

static const struct option longopts[] = {
	{ "model", required_argument, NULL, 'm' },
	{ "socket", required_argument, NULL, OPT_SOCKET },
	{ "backend", required_argument, NULL, OPT_BACKEND },
	{ "slots", required_argument, NULL, OPT_SLOTS },
	{ "ctx", required_argument, NULL, OPT_CTX },
	{ "batch", required_argument, NULL, OPT_BATCH },
	{ "threads", required_argument, NULL, OPT_THREADS },
	{ "device", required_argument, NULL, OPT_DEVICE },
	{ "wake", required_argument, NULL, OPT_WAKE },
	{ "queue", required_argument, NULL, OPT_QUEUE },
	{ "max-tokens", required_argument, NULL, OPT_MAX_TOKENS },
	{ "mem-limit", required_argument, NULL, OPT_MEM_LIMIT },
	{ "allow-uid", required_argument, NULL, OPT_ALLOW_UID },
	{ "allow-gid", required_argument, NULL, OPT_ALLOW_GID },
	{ "admin-uid", required_argument, NULL, OPT_ADMIN_UID },
	{ "max-sessions-per-uid", required_argument, NULL, OPT_SESS_UID },
	{ "max-requests-per-uid", required_argument, NULL, OPT_REQ_UID },
	{ "max-tokens-per-uid", required_argument, NULL, OPT_TOK_UID },
	{ "verbose", no_argument, NULL, 'v' },
	{ "help", no_argument, NULL, 'h' },
	{ NULL, 0, NULL, 0 },
};

typedef struct {
	const char *models[MAX_MODELS];
	int n_models;
	const char *socket;
	WorkerParams wp;
	Policy pol;
	int verbose;
	char *env_models; /* strdup of $QUANTD_MODELS, split in place */
} ServeArgs;

static int parse_args(int argc, char **argv, ServeArgs *a)
{
	/* wake_inline by default: batching the wakes through the loop thread saves the engine
	 * ~6 us per token but costs the loop thread as much and delays tokens to sleeping
	 * clients (16 clients on 2 cores: p50 ~30 us inline, ~300 us batched). */
	a->wp.sched = (SchedParams){ .wake_inline = true, .n_slots = 16, .n_ctx = 0, .n_batch = 256, .queue_max = 64,
				     .max_tokens = 4096, .backend = "auto" };
	policy_defaults(&a->pol);
	optind = 1;
	int c, v, rc = 0;
	uint64_t u64;
	while ((c = getopt_long(argc, argv, "m:vh", longopts, NULL)) != -1 && rc == 0) {
		switch (c) {
		case 'm':
			if (a->n_models == MAX_MODELS)
				rc = -E2BIG;
			else
				a->models[a->n_models++] = optarg;
			break;
		case OPT_SOCKET: a->socket = optarg; break;
		case OPT_BACKEND:
			if (strcmp(optarg, "cpu") && strcmp(optarg, "cuda") && strcmp(optarg, "auto"))
				rc = -EINVAL;
			a->wp.sched.backend = optarg;
			break;
		case OPT_SLOTS: rc = parse_int(optarg, 1, 256, &a->wp.sched.n_slots); break;
		case OPT_CTX: rc = parse_int(optarg, 16, 1 << 20, &a->wp.sched.n_ctx); break;
		case OPT_BATCH: rc = parse_int(optarg, 1, 65536, &a->wp.sched.n_batch); break;
		case OPT_THREADS: rc = parse_int(optarg, 0, 4096, &a->wp.sched.n_threads); break;
		case OPT_DEVICE: rc = parse_int(optarg, 0, 1023, &a->wp.sched.device); break;
		case OPT_WAKE:
			if (strcmp(optarg, "batch") && strcmp(optarg, "inline"))
				rc = -EINVAL;
			a->wp.sched.wake_inline = !strcmp(optarg, "inline");
			break;
		case OPT_QUEUE: rc = parse_int(optarg, 0, 1 << 20, &a->wp.sched.queue_max); break;
		case OPT_MAX_TOKENS:
			rc = parse_int(optarg, 1, 1 << 24, &v);
			a->pol.max_tokens_per_request = a->wp.sched.max_tokens = (uint32_t)v;
			break;
		case OPT_MEM_LIMIT: rc = parse_size(optarg, &a->wp.sched.mem_limit); break;
		case OPT_ALLOW_UID:
			rc = a->pol.n_allow_uid == POLICY_MAX_IDS ? -E2BIG
				: policy_parse_uid(optarg, &a->pol.allow_uid[a->pol.n_allow_uid++]);
			break;
		case OPT_ALLOW_GID:
			rc = a->pol.n_allow_gid == POLICY_MAX_IDS ? -E2BIG
				: policy_parse_gid(optarg, &a->pol.allow_gid[a->pol.n_allow_gid++]);
			break;
		case OPT_ADMIN_UID:
			rc = a->pol.n_admin_uid == POLICY_MAX_IDS ? -E2BIG
				: policy_parse_uid(optarg, &a->pol.admin_uid[a->pol.n_admin_uid++]);
			break;
		case OPT_SESS_UID: rc = parse_int(optarg, 1, 1 << 20, &a->pol.max_sessions_per_uid); break;
		case OPT_REQ_UID: rc = parse_int(optarg, 1, 1 << 20, &a->pol.max_requests_per_uid); break;
		case OPT_TOK_UID:
			rc = parse_size(optarg, &u64);
			a->pol.max_tokens_per_uid = u64;
			break;
		case 'v': a->verbose = 1; break;
		case 'h': usage(stdout); return 1;
		default: return -EINVAL;
		}
		if (rc < 0)
			fprintf(stderr, "quantd serve: bad value for --%s: %s\n",
				c == 'm' ? "model" : longopts[c - OPT_SOCKET + 1].name, optarg);
	}
	if (rc < 0)
		return rc;
	if (optind < argc) {
		fprintf(stderr, "quantd serve: unexpected argument '%s'\n", argv[optind]);
		return -EINVAL;
	}
	if (!a->n_models && getenv("QUANTD_MODELS")) {
		a->env_models = strdup(getenv("QUANTD_MODELS"));
		for (char *save = NULL, *p = strtok_r(a->env_models, ":", &save);
		     p && a->n_models < MAX_MODELS; p = strtok_r(NULL, ":", &save))
			a->models[a->n_models++] = p;
	}
	if (!a->n_models) {
		fprintf(stderr, "quantd serve: no model given (-m PATH or $QUANTD_MODELS)\n");
		return -EINVAL;
	}
	if (!a->socket)
		a->socket = getenv("QUANTD_SOCKET") && *getenv("QUANTD_SOCKET")
				    ? getenv("QUANTD_SOCKET") : DEFAULT_SOCKET;
	return 0;
}

int cmd_serve(int argc, char **argv)
{
	ServeArgs a = { 0 };
	int rc = parse_args(argc, argv, &a);
	if (rc != 0) {
		if (rc < 0)
			usage(stderr);
		free(a.env_models);
		return rc < 0 ? 2 : 0;
	}
	log_init(a.verbose ? LOG_DEBUG : LOG_INFO);
	signal(SIGPIPE, SIG_IGN);
	sigset_t ss;
	sigemptyset(&ss);
	sigaddset(&ss, SIGTERM);
	sigaddset(&ss, SIGINT);
	/* Blocked before the engine thread exists, so it inherits the mask and only the
	 * signalfd ever sees these signals. */
	pthread_sigmask(SIG_BLOCK, &ss, NULL);
	int sig_fd = signalfd(-1, &ss, SFD_CLOEXEC | SFD_NONBLOCK);

	bool own_socket = false;
	int lfd = systemd_socket();
	if (lfd == -ENOENT) {
		lfd = open_socket(a.socket);
		own_socket = lfd >= 0;
	}
	int exit_code = 1;
	Queue tasks, results;
	bool qt = false, qr = false;
	Worker *w = NULL;
	Loop *L = NULL;
	if (lfd < 0 || sig_fd < 0)
		goto out;
	if (queue_init(&tasks) < 0 || !(qt = true) || queue_init(&results) < 0 || !(qr = true))
		goto out;
	log_info("listening on %s%s", own_socket ? a.socket : "the socket systemd passed",
		 own_socket ? "" : " (socket activation)");
	uint64_t wd = 0;
	if (sd_watchdog_enabled(0, &wd) <= 0)
		wd = 0;
	a.wp.models = a.models;
	a.wp.n_models = a.n_models;
	a.wp.watchdog_usec = wd;
	a.wp.t_start_ns = now_ns();
	sd_notify(0, "STATUS=Loading models");
	L = malloc(sizeof *L);
	if (!L)
		goto out;
	rc = loop_init(L, lfd, sig_fd, &tasks, &results);
	if (rc < 0) {
		log_err("cannot set up io_uring: %s", strerror(-rc));
		loop_done(L);
		free(L);
		L = NULL;
		goto out;
	}
	L->pol = a.pol;
	rc = worker_start(&a.wp, &tasks, &results, &w);
	if (rc < 0) {
		log_err("cannot start the engine thread: %s", strerror(-rc));
		goto out;
	}
	L->worker = w;
	exit_code = loop_run(L);
	log_info("stopped");
out:
	worker_join(w);
	if (L) {
		loop_done(L);
		free(L);
	}
	if (qt)
		queue_done(&tasks);
	if (qr)
		queue_done(&results);
	if (lfd >= 0)
		close(lfd);
	if (own_socket)
		unlink(a.socket);
	if (sig_fd >= 0)
		close(sig_fd);
	free(a.env_models);
	return exit_code;
}

/* tests/daemon/harness.c: the daemon under test (see harness.h). */
#include "harness.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "client/quantd.h"
#include "proto/frame.h"
#include "proto/quantd.pb-c.h"
#include "tests/testutil.h"

uint64_t mono_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

uint64_t mono_ms(void)
{
	return mono_ns() / 1000000;
}

const char *serve_bin(void)
{
	static char p[512];
	snprintf(p, sizeof p, "%s/tests/daemon/qd-serve", tu_build_dir());
	return p;
}

bool can_run(const char *test)
{
	const char *why = cannot_run();
	if (why) {
		tu_skip(test, why);
		return false;
	}
	return true;
}

const char *cannot_run(void)
{
	if (access(serve_bin(), X_OK) != 0)
		return "no qd-serve binary (make $(O)/tests/daemon/qd-serve)";
	if (access(tu_model_path(), R_OK) != 0)
		return "model missing (make model)";
	return NULL;
}

/* Appends one datagram (BUF, N bytes, NUL-terminated) to d->notes while there is room. */
static void note_add(Daemon *d, const char *buf, size_t n)
{
	if (d->notes_len + n + 2 < sizeof d->notes) {
		memcpy(d->notes + d->notes_len, buf, n);
		d->notes_len += n;
		d->notes[d->notes_len++] = '\n';
		d->notes[d->notes_len] = 0;
	}
}

void notify_drain(Daemon *d)
{
	char buf[1024];
	ssize_t n;
	while ((n = recv(d->nfd, buf, sizeof buf - 1, MSG_DONTWAIT)) > 0) {
		buf[n] = 0;
		note_add(d, buf, (size_t)n);
	}
}

bool notify_wait(Daemon *d, const char *want, int timeout_ms)
{
	uint64_t end = mono_ms() + (uint64_t)timeout_ms;
	if (strstr(d->notes, want))
		return true;
	for (;;) {
		uint64_t now = mono_ms();
		if (now >= end)
			return false;
		struct pollfd p = { .fd = d->nfd, .events = POLLIN };
		if (poll(&p, 1, (int)(end - now)) <= 0)
			continue;
		char buf[1024];
		ssize_t n = recv(d->nfd, buf, sizeof buf - 1, 0);
		if (n <= 0)
			continue;
		buf[n] = 0;
		note_add(d, buf, (size_t)n);
		if (strstr(buf, want))
			return true;
	}
}

bool daemon_start(Daemon *d, bool activate, const char *const *extra)
{
	memset(d, 0, sizeof *d);
	static int seq;
	snprintf(d->dir, sizeof d->dir, "/tmp/qd-e2e-%d-%d", (int)getpid(), seq++);
	mkdir(d->dir, 0700);
	snprintf(d->sock, sizeof d->sock, "%s/q.sock", d->dir);
	snprintf(d->notify, sizeof d->notify, "%s/notify", d->dir);
	snprintf(d->log, sizeof d->log, "%s/daemon.log", d->dir);
	d->nfd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	strcpy(a.sun_path, d->notify);
	if (bind(d->nfd, (struct sockaddr *)&a, sizeof a) < 0)
		return false;
	char envn[160];
	snprintf(envn, sizeof envn, "NOTIFY_SOCKET=%s", d->notify);
	const char *argv[48];
	int n = 0;
	if (activate) {
		argv[n++] = "systemd-socket-activate";
		argv[n++] = "--seqpacket";
		argv[n++] = "-l";
		argv[n++] = d->sock;
		argv[n++] = "-E";
		argv[n++] = envn;
	}
	argv[n++] = serve_bin();
	argv[n++] = "-m";
	argv[n++] = tu_model_path();
	if (!activate) {
		argv[n++] = "--socket";
		argv[n++] = d->sock;
	}
	for (int i = 0; extra && extra[i] && n < 46; i++)
		argv[n++] = extra[i];
	argv[n] = NULL;
	d->pid = fork();
	if (d->pid == 0) {
		int lf = open(d->log, O_WRONLY | O_CREAT | O_TRUNC, 0600);
		if (lf >= 0) {
			dup2(lf, 2);
			dup2(lf, 1);
		}
		setenv("NOTIFY_SOCKET", d->notify, 1);
		execvp(argv[0], (char *const *)argv);
		_exit(127);
	}
	if (activate) { /* wait for the listening socket */
		for (int i = 0; i < 200 && access(d->sock, F_OK) != 0; i++)
			usleep(10000);
		return access(d->sock, F_OK) == 0;
	}
	return notify_wait(d, "READY=1", 60000);
}

int daemon_stop(Daemon *d)
{
	if (d->pid <= 0)
		return -1;
	kill(d->pid, SIGTERM);
	int st = 0;
	for (int i = 0; i < 1000; i++) {
		pid_t r = waitpid(d->pid, &st, WNOHANG);
		if (r == d->pid) {
			d->pid = 0;
			notify_wait(d, "STOPPING=1", 10);
			close(d->nfd);
			unlink(d->notify);
			unlink(d->sock);
			if (getenv("QD_KEEP_LOGS") == NULL) {
				unlink(d->log);
				rmdir(d->dir);
			}
			return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
		}
		usleep(10000);
	}
	kill(d->pid, SIGKILL);
	waitpid(d->pid, &st, 0);
	d->pid = 0;
	return -1;
}

bool daemon_ensure(Daemon *d, const char *test, const char *const *extra)
{
	if (!can_run(test))
		return false;
	if (d->pid > 0)
		return true;
	bool ok = daemon_start(d, false, extra);
	if (!ok)
		tu_skip(test, "daemon did not become ready");
	return ok;
}

int gen_run(const char *sock, const qd_gen_params *p, const char *prompt, int32_t *toks, int *ret_n, char *text,
	    size_t cap)
{
	size_t tl = 0;
	qd_client *c;
	char err[256];
	int rc = qd_connect(sock, &c, err, sizeof err);
	if (rc < 0)
		return rc;
	const int max_tokens = (int)p->max_tokens;
	uint64_t id;
	rc = qd_generate(c, prompt, p, &id);
	int n = 0;
	while (rc == 0) {
		qd_event ev;
		rc = qd_next(c, &ev, 60000);
		if (rc < 0 || ev.request_id != id)
			continue;
		if (ev.kind == QD_EVENT_FINAL)
			break;
		if (n < max_tokens)
			toks[n++] = ev.token;
		if (text && tl + ev.piece_len < cap) {
			memcpy(text + tl, ev.piece, ev.piece_len);
			tl += ev.piece_len;
		}
	}
	if (text)
		text[tl] = 0;
	qd_close(c);
	*ret_n = n;
	return rc;
}

int greedy_run(const char *sock, const char *model, const char *prompt, int max_tokens,
	       int32_t *toks, int *ret_n, char *text, size_t cap)
{
	qd_gen_params p;
	qd_gen_params_init(&p);
	p.model = model;
	p.max_tokens = (uint32_t)max_tokens;
	return gen_run(sock, &p, prompt, toks, ret_n, text, cap);
}

bool daemon_healthy(const char *sock)
{
	qd_client *c;
	if (qd_connect(sock, &c, NULL, 0) < 0)
		return false;
	qd_health h;
	bool ok = qd_get_health(c, &h) == 0 && h.ok;
	qd_close(c);
	return ok;
}

int count_fds(pid_t pid)
{
	char p[64];
	snprintf(p, sizeof p, "/proc/%d/fd", (int)pid);
	DIR *d = opendir(p);
	int n = 0;
	if (!d)
		return -1;
	while (readdir(d))
		n++;
	closedir(d);
	return n;
}

long rss_kb(pid_t pid)
{
	char p[64], line[256];
	snprintf(p, sizeof p, "/proc/%d/status", (int)pid);
	FILE *f = fopen(p, "r");
	long kb = -1;
	while (f && fgets(line, sizeof line, f))
		if (sscanf(line, "VmRSS: %ld kB", &kb) == 1)
			break;
	if (f)
		fclose(f);
	return kb;
}

int raw_connect(const char *sock)
{
	int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	strcpy(a.sun_path, sock);
	if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) {
		close(fd);
		return -1;
	}
	struct timeval tv = { .tv_sec = 10 };
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
	return fd;
}

int raw_reply(int fd, int *fds, unsigned *nfds)
{
	static uint8_t buf[QD_MSG_MAX], abuf[QD_ARENA_SIZE];
	size_t len;
	unsigned n = 0;
	int tmp[QD_MSG_FDS];
	if (qd_frame_recv(fd, buf, sizeof buf, &len, fds ? fds : tmp, QD_MSG_FDS, &n) < 0)
		return -1;
	if (nfds)
		*nfds = n;
	QdArena a;
	qd_arena_init(&a, abuf, sizeof abuf);
	Quantd__Reply *r = (Quantd__Reply *)qd_frame_unpack(&quantd__reply__descriptor, &a, buf, len);
	return r ? r->err : -1;
}

/* tests/daemon/harness.h: what the daemon's end-to-end suites share: starting and stopping
 * the real daemon ($QD_BUILD/tests/daemon/qd-serve, `quantd serve` as its own binary) with
 * the real model, reading its sd_notify datagrams, greedy runs through libquantd, raw
 * control-socket access for hostile-client tests, and /proc probes of the daemon process.
 *
 * Everything here runs in the test process, single-threaded unless a function says
 * otherwise; nothing here asserts (callers decide what is a failure). */
#ifndef QD_TESTS_DAEMON_HARNESS_H
#define QD_TESTS_DAEMON_HARNESS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "client/quantd.h"

/* One daemon under test.  All fields are written by daemon_start() and read by the tests;
 * pid is 0 once daemon_stop() reaped it. */
typedef struct {
	pid_t pid;
	char dir[64], sock[108], notify[108], log[128]; /* private dir, its socket, notify
							 * socket and the daemon's stderr+stdout */
	int nfd;           /* NOTIFY_SOCKET datagram socket, bound by the test */
	char notes[8192];  /* every notify datagram seen so far, one per line */
	size_t notes_len;
} Daemon;

/* CLOCK_MONOTONIC in milliseconds (the daemon's t_daemon_ns uses the same clock). */
uint64_t mono_ms(void);
/* CLOCK_MONOTONIC in nanoseconds, comparable with qd_event.t_daemon_ns. */
uint64_t mono_ns(void);

/* Path of the qd-serve binary under tu_build_dir() (a static buffer). */
const char *serve_bin(void);
/* True when qd-serve and the model exist; else prints SKIP for TEST and returns false. */
bool can_run(const char *test);
/* skip_if hook for TuTest: why the end-to-end tests cannot run here, or NULL. */
const char *cannot_run(void);

/* Collects D's notify datagrams for up to TIMEOUT_MS or until one contains WANT (true;
 * also true at once when an earlier one did).  Appends them to d->notes. */
bool notify_wait(Daemon *d, const char *want, int timeout_ms);
/* Reads every datagram already queued on d->nfd into d->notes, without waiting.  The
 * daemon's sd_notify() blocks once the socket holds net.unix.max_dgram_qlen (10 by
 * default) unread datagrams, so a test that makes it send many (each LoadModel and
 * UnloadModel sends STATUS=) drains between them. */
void notify_drain(Daemon *d);
/* Starts a daemon serving tu_model_path() in a fresh /tmp/qd-e2e-PID-N directory, with
 * EXTRA (NULL-terminated, may be NULL) appended to its arguments.  With ACTIVATE it runs
 * under systemd-socket-activate and returns once the listening socket exists; otherwise
 * it returns once READY=1 arrived (60 s at most).  Returns false when the daemon did not
 * get that far (it may still be running: call daemon_stop()). */
bool daemon_start(Daemon *d, bool activate, const char *const *extra);
/* SIGTERM, then waits up to 10 s (SIGKILL after that).  Removes the directory unless
 * $QD_KEEP_LOGS is set.  Returns the exit status (128+N for signal N), or -1 when it was
 * not running or had to be killed. */
int daemon_stop(Daemon *d);
/* Starts D with EXTRA unless it runs already (d->pid > 0).  False, with SKIP printed for
 * TEST, when the tests cannot run here or the daemon did not become ready. */
bool daemon_ensure(Daemon *d, const char *test, const char *const *extra);

/* A generation of PROMPT with P through a fresh session: up to P->max_tokens ids into TOKS
 * (room for that many), their count into *ret_n, and, when TEXT is not NULL, the generated
 * text NUL-terminated into TEXT (CAP bytes, cut short when longer).  Returns 0 or the
 * client's -errno. */
int gen_run(const char *sock, const qd_gen_params *p, const char *prompt, int32_t *toks, int *ret_n, char *text,
	    size_t cap);
/* gen_run greedy on MODEL (NULL: the first model), MAX_TOKENS at most. */
int greedy_run(const char *sock, const char *model, const char *prompt, int max_tokens,
	       int32_t *toks, int *ret_n, char *text, size_t cap);
/* True when a fresh session on SOCK gets a Health reply that says ok. */
bool daemon_healthy(const char *sock);

/* Open descriptors of process PID (entries of /proc/PID/fd), or -1. */
int count_fds(pid_t pid);
/* VmRSS of process PID in kB, or -1. */
long rss_kb(pid_t pid);

/* A raw SOCK_SEQPACKET connection to SOCK with a 10 s receive timeout (no Hello sent), or
 * -1. */
int raw_connect(const char *sock);
/* Reads the next reply on FD: its err (a positive errno, 0 for success), or -1 for end of
 * stream, a timeout or an undecodable packet.  Descriptors that came with it go to FDS
 * (room for QD_MSG_FDS) and their count to *NFDS (may be NULL); with FDS NULL they are
 * received into a scratch array and left open (tests pass NULL only where the reply
 * carries none).  Not thread-safe (static buffers). */
int raw_reply(int fd, int *fds, unsigned *nfds);

#endif

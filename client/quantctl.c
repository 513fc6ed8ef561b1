/* client/quantctl.c: the command line for a running quantd.
 *
 * Exit status: 0 success, 1 failure, 2 usage, 3 daemon not running, 4 access denied,
 * 5 busy or over a limit, 130 interrupted. */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "quantd.h"

static volatile sig_atomic_t got_sigint;

static void on_sigint(int sig)
{
	(void)sig;
	got_sigint = 1;
}

static int exit_code(int rc)
{
	switch (-rc) {
	case 0: return 0;
	case ENOENT: case ECONNREFUSED: return 3;
	case EACCES: case EPERM: return 4;
	case EBUSY: case EDQUOT: return 5;
	case EINTR: return 130;
	default: return 1;
	}
}

static int die(qd_client *c, int rc, const char *what)
{
	fprintf(stderr, "quantctl: %s: %s\n", what, c ? qd_errmsg(c) : strerror(-rc));
	return exit_code(rc);
}

static void usage(FILE *f)
{
	fprintf(f,
		"usage: quantctl [--socket PATH] COMMAND [ARGS]\n"
		"  generate [-n N] [--temp T] [--seed S] [--top-k K] [--top-p P] [--min-p P] [--model NAME]\n"
		"           [--stop STR] [--json] PROMPT...   stream a completion (PROMPT '-' reads stdin;\n"
		"           greedy by default; --temp T > 0 samples with top-k 40, top-p 0.95 and\n"
		"           min-p 0.05 as quantd run does, each unless given; 0 turns one off)\n"
		"  chat [-n N] [--temp T] [--top-k K] [--top-p P] [--min-p P] [--model NAME] [--system TEXT]\n"
		"           multi-turn chat on stdin (sampling defaults as generate);\n"
		"           Ctrl-C stops the current reply, Ctrl-D ends\n"
		"  models                     loaded models\n"
		"  ps                         running and queued requests\n"
		"  stats                      per-model and daemon statistics\n"
		"  load PATH [--name N] [--slots N] [--ctx N]   load a model (admin)\n"
		"  unload NAME                unload a model (admin)\n"
		"  health                     exit 0 when the daemon serves\n"
		"  tokenize [--model NAME] [--json] TEXT...   token ids of TEXT ('-' reads stdin;\n"
		"           --json: ids with their pieces)\n"
		"  detokenize [--model NAME] ID...   text of token ids\n"
		"The socket is --socket, else $QUANTD_SOCKET, else " QD_DEFAULT_SOCKET ".\n");
}

/* JSON string body for bytes S: escapes, and holds back an incomplete UTF-8 tail in
 * CARRY so that each printed string is valid UTF-8. */
static void json_text(FILE *f, const char *s, size_t n, char *carry, size_t *carry_len)
{
	char buf[512];
	size_t len = *carry_len;
	memcpy(buf, carry, len);
	if (n > sizeof buf - len)
		n = sizeof buf - len;
	memcpy(buf + len, s, n);
	len += n;
	size_t end = len, k = 0;
	/* find the start of a trailing incomplete sequence, if any */
	while (k < 3 && k < len && ((unsigned char)buf[len - 1 - k] & 0xc0) == 0x80)
		k++;
	if (k < len) {
		unsigned char lead = (unsigned char)buf[len - 1 - k];
		size_t need = lead >= 0xf0 ? 4 : lead >= 0xe0 ? 3 : lead >= 0xc0 ? 2 : 1;
		if (need > k + 1)
			end = len - 1 - k;
	}
	for (size_t i = 0; i < end; i++) {
		unsigned char ch = (unsigned char)buf[i];
		if (ch == '"' || ch == '\\')
			fprintf(f, "\\%c", ch);
		else if (ch == '\n')
			fputs("\\n", f);
		else if (ch == '\t')
			fputs("\\t", f);
		else if (ch < 0x20)
			fprintf(f, "\\u%04x", ch);
		else
			fputc(ch, f);
	}
	*carry_len = len - end;
	memcpy(carry, buf + end, *carry_len);
}

typedef struct {
	bool json;
	char carry[4];
	size_t carry_len;
} Printer;

static void print_event(Printer *p, const qd_event *ev)
{
	if (ev->kind == QD_EVENT_TOKEN) {
		if (!p->json) {
			fwrite(ev->piece, 1, ev->piece_len, stdout);
			fflush(stdout);
			return;
		}
		printf("{\"request\":%llu,\"index\":%u,\"token\":%d,\"text\":\"",
		       (unsigned long long)ev->request_id, ev->index, ev->token);
		json_text(stdout, ev->piece, ev->piece_len, p->carry, &p->carry_len);
		printf("\"}\n");
		fflush(stdout);
		return;
	}
	if (!p->json) {
		if (ev->finish == QD_FINISH_REASON_ERROR || ev->finish == QD_FINISH_REASON_SHUTDOWN ||
		    ev->finish == QD_FINISH_REASON_UNLOADED)
			fprintf(stderr, "\nquantctl: generation ended: %s%s%s\n",
				qd_finish_name(ev->finish), ev->error ? ": " : "",
				ev->error ? strerror(ev->error) : "");
		else
			printf("\n");
		return;
	}
	printf("{\"request\":%llu,\"finish\":\"%s\",\"error\":%d,\"n_prompt\":%u,"
	       "\"n_generated\":%u,\"queue_ms\":%.3f,\"prefill_ms\":%.3f,\"decode_ms\":%.3f}\n",
	       (unsigned long long)ev->request_id, qd_finish_name(ev->finish), ev->error,
	       ev->n_prompt, ev->n_generated, ev->queue_ns / 1e6, ev->prefill_ns / 1e6,
	       ev->decode_ns / 1e6);
	fflush(stdout);
}

/* Streams request ID to the printer until its final record; Ctrl-C cancels it. */
static int stream(qd_client *c, uint64_t id, Printer *p, qd_event *ret_final)
{
	bool cancelled = false;
	for (;;) {
		qd_event ev;
		int rc = qd_next(c, &ev, -1);
		if (rc == -EINTR || got_sigint) {
			got_sigint = 0;
			if (!cancelled) {
				cancelled = true;
				int r2 = qd_cancel(c, id);
				if (r2 < 0 && r2 != -ENOENT)
					return r2;
			}
			if (rc == -EINTR)
				continue;
		}
		if (rc < 0)
			return rc;
		if (ev.request_id != id)
			continue;
		print_event(p, &ev);
		if (ev.kind == QD_EVENT_FINAL) {
			if (ret_final)
				*ret_final = ev;
			return cancelled ? -EINTR : 0;
		}
	}
}

enum { O_TEMP = 256, O_SEED, O_TOPK, O_TOPP, O_MINP, O_MODEL, O_STOP, O_JSON, O_SYSTEM, O_NAME, O_SLOTS,
       O_CTX };

static const struct option gen_opts[] = {
	{ "temp", required_argument, NULL, O_TEMP }, { "seed", required_argument, NULL, O_SEED },
	{ "top-k", required_argument, NULL, O_TOPK }, { "top-p", required_argument, NULL, O_TOPP },
	{ "min-p", required_argument, NULL, O_MINP },
	{ "model", required_argument, NULL, O_MODEL }, { "stop", required_argument, NULL, O_STOP },
	{ "json", no_argument, NULL, O_JSON }, { "system", required_argument, NULL, O_SYSTEM },
	{ "name", required_argument, NULL, O_NAME }, { "slots", required_argument, NULL, O_SLOTS },
	{ "ctx", required_argument, NULL, O_CTX }, { NULL, 0, NULL, 0 },
};

typedef struct {
	qd_gen_params p;
	bool top_k_set, top_p_set, min_p_set;
	const char *stops[8];
	bool json;
	const char *system, *name;
	uint32_t slots, ctx;
} CmdOpts;

static int parse_cmd_opts(int argc, char **argv, CmdOpts *o)
{
	qd_gen_params_init(&o->p);
	o->p.stop = o->stops;
	optind = 1;
	int ch;
	while ((ch = getopt_long(argc, argv, "+n:", gen_opts, NULL)) != -1) {
		switch (ch) {
		case 'n': o->p.max_tokens = (uint32_t)strtoul(optarg, NULL, 10); break;
		case O_TEMP: o->p.temperature = strtof(optarg, NULL); break;
		case O_SEED: o->p.seed = strtoull(optarg, NULL, 10); break;
		case O_TOPK:
			o->p.top_k = atoi(optarg);
			o->top_k_set = true;
			break;
		case O_TOPP:
			o->p.top_p = strtof(optarg, NULL);
			o->top_p_set = true;
			break;
		case O_MINP:
			o->p.min_p = strtof(optarg, NULL);
			o->min_p_set = true;
			break;
		case O_MODEL: o->p.model = optarg; break;
		case O_STOP:
			if (o->p.n_stop < 8)
				o->stops[o->p.n_stop++] = optarg;
			break;
		case O_JSON: o->json = true; break;
		case O_SYSTEM: o->system = optarg; break;
		case O_NAME: o->name = optarg; break;
		case O_SLOTS: o->slots = (uint32_t)strtoul(optarg, NULL, 10); break;
		case O_CTX: o->ctx = (uint32_t)strtoul(optarg, NULL, 10); break;
		default: return -EINVAL;
		}
	}
	/* Sampling without filters would draw from the whole vocabulary's tail (and cost a
	 * softmax over all of it per token): --temp T > 0 filters like `quantd run`, each of
	 * top-k 40, top-p 0.95 and min-p 0.05 unless given (0 turns one off). */
	if (o->p.temperature > 0) {
		if (!o->top_k_set)
			o->p.top_k = 40;
		if (!o->top_p_set)
			o->p.top_p = 0.95f;
		if (!o->min_p_set)
			o->p.min_p = 0.05f;
	}
	return 0;
}

static char *read_all(FILE *f)
{
	size_t cap = 4096, len = 0;
	char *b = malloc(cap);
	while (b) {
		size_t n = fread(b + len, 1, cap - len - 1, f);
		len += n;
		if (n == 0)
			break;
		if (len + 1 == cap) {
			char *nb = realloc(b, cap *= 2);
			if (!nb)
				free(b);
			b = nb;
		}
	}
	if (b)
		b[len] = 0;
	return b;
}

/* The words from optind on joined by spaces, or stdin for a single '-'; malloc'd. */
static char *args_text(int argc, char **argv)
{
	if (argc - optind == 1 && !strcmp(argv[optind], "-"))
		return read_all(stdin);
	size_t len = 1;
	for (int i = optind; i < argc; i++)
		len += strlen(argv[i]) + 1;
	char *s = calloc(1, len);
	for (int i = optind; s && i < argc; i++) {
		if (i > optind)
			strcat(s, " ");
		strcat(s, argv[i]);
	}
	return s;
}

static int cmd_tokenize(qd_client *c, int argc, char **argv)
{
	CmdOpts o = { 0 };
	if (parse_cmd_opts(argc, argv, &o) < 0 || optind >= argc) {
		usage(stderr);
		return 2;
	}
	char *text = args_text(argc, argv);
	if (!text)
		return 1;
	int32_t *ids = NULL;
	size_t n = 0;
	int rc = qd_tokenize(c, o.p.model, text, strlen(text), true, &ids, &n);
	free(text);
	if (rc < 0)
		return die(c, rc, "tokenize");
	if (o.json)
		printf("[");
	for (size_t i = 0; i < n; i++) {
		if (!o.json) {
			printf("%s%d", i ? " " : "", ids[i]);
			continue;
		}
		char *piece = NULL;
		size_t len = 0;
		rc = qd_detokenize(c, o.p.model, &ids[i], 1, true, &piece, &len);
		if (rc < 0) {
			free(ids);
			return die(c, rc, "tokenize");
		}
		char carry[4];
		size_t carry_len = 0;
		printf("%s{\"id\":%d,\"piece\":\"", i ? "," : "", ids[i]);
		json_text(stdout, piece, len, carry, &carry_len);
		printf("\"}");
		free(piece);
	}
	printf(o.json ? "]\n" : "\n");
	free(ids);
	return 0;
}

static int cmd_detokenize(qd_client *c, int argc, char **argv)
{
	CmdOpts o = { 0 };
	if (parse_cmd_opts(argc, argv, &o) < 0 || optind >= argc) {
		usage(stderr);
		return 2;
	}
	size_t n = (size_t)(argc - optind);
	int32_t *ids = malloc(n * sizeof *ids);
	if (!ids)
		return 1;
	for (size_t i = 0; i < n; i++) {
		char *end;
		long v = strtol(argv[optind + (int)i], &end, 10);
		if (*end || end == argv[optind + (int)i] || v < 0 || v > INT32_MAX) {
			fprintf(stderr, "quantctl: detokenize: '%s' is not a token id\n",
				argv[optind + (int)i]);
			free(ids);
			return 2;
		}
		ids[i] = (int32_t)v;
	}
	char *text = NULL;
	size_t len = 0;
	int rc = qd_detokenize(c, o.p.model, ids, n, true, &text, &len);
	free(ids);
	if (rc < 0)
		return die(c, rc, "detokenize");
	fwrite(text, 1, len, stdout);
	putchar('\n');
	free(text);
	return 0;
}

static int cmd_generate(qd_client *c, int argc, char **argv)
{
	CmdOpts o = { 0 };
	if (parse_cmd_opts(argc, argv, &o) < 0 || optind >= argc) {
		usage(stderr);
		return 2;
	}
	char *prompt = args_text(argc, argv);
	if (!prompt)
		return 1;
	uint64_t id;
	int rc = qd_generate(c, prompt, &o.p, &id);
	free(prompt);
	if (rc < 0)
		return die(c, rc, "generate");
	Printer pr = { .json = o.json };
	qd_event fin;
	rc = stream(c, id, &pr, &fin);
	if (rc == -EINTR)
		return 130;
	if (rc < 0)
		return die(c, rc, "generate");
	return fin.finish == QD_FINISH_REASON_ERROR || fin.finish == QD_FINISH_REASON_SHUTDOWN ? 1 : 0;
}

static int cmd_chat(qd_client *c, int argc, char **argv)
{
	CmdOpts o = { 0 };
	if (parse_cmd_opts(argc, argv, &o) < 0 || optind != argc) {
		usage(stderr);
		return 2;
	}
	size_t cap = 64, n = 0;
	qd_chat_msg *msgs = calloc(cap, sizeof *msgs);
	char **owned = calloc(cap, sizeof *owned);
	if (!msgs || !owned)
		return 1;
	if (o.system)
		msgs[n++] = (qd_chat_msg){ "system", o.system };
	bool tty = isatty(STDIN_FILENO);
	int rc = 0;
	char line[8192];
	for (;;) {
		if (tty) {
			fputs("> ", stdout);
			fflush(stdout);
		}
		got_sigint = 0;
		if (!fgets(line, sizeof line, stdin)) {
			if (ferror(stdin) && errno == EINTR) {
				clearerr(stdin);
				fputc('\n', stdout);
				continue;
			}
			break;
		}
		line[strcspn(line, "\n")] = 0;
		if (!line[0])
			continue;
		if (n + 2 > cap)
			break; /* conversation full: a new chat starts over */
		owned[n] = strdup(line);
		msgs[n] = (qd_chat_msg){ "user", owned[n] };
		n++;
		uint64_t id;
		rc = qd_generate_chat(c, msgs, n, &o.p, &id);
		if (rc < 0) {
			rc = die(c, rc, "chat");
			break;
		}
		/* Collect the reply to keep it in the history. */
		size_t rlen = 0, rcap = 1024;
		char *reply = malloc(rcap);
		bool cancelled = false;
		for (;;) {
			qd_event ev;
			int r = qd_next(c, &ev, -1);
			if (r == -EINTR || got_sigint) {
				got_sigint = 0;
				if (!cancelled) {
					cancelled = true;
					qd_cancel(c, id);
				}
				if (r == -EINTR)
					continue;
			}
			if (r < 0) {
				rc = die(c, r, "chat");
				break;
			}
			if (ev.request_id != id)
				continue;
			if (ev.kind == QD_EVENT_FINAL) {
				fputc('\n', stdout);
				break;
			}
			fwrite(ev.piece, 1, ev.piece_len, stdout);
			fflush(stdout);
			if (reply && rlen + ev.piece_len + 1 > rcap) {
				char *nr = realloc(reply, rcap = (rlen + ev.piece_len + 1) * 2);
				if (!nr)
					free(reply);
				reply = nr;
			}
			if (reply) {
				memcpy(reply + rlen, ev.piece, ev.piece_len);
				rlen += ev.piece_len;
			}
		}
		if (rc)
			break;
		if (reply)
			reply[rlen] = 0;
		owned[n] = reply;
		msgs[n] = (qd_chat_msg){ "assistant", reply ? reply : "" };
		n++;
	}
	for (size_t i = 0; i < n; i++)
		free(owned[i]);
	free(owned);
	free(msgs);
	return rc;
}

static int cmd_models(qd_client *c)
{
	qd_model_info *m;
	size_t n;
	int rc = qd_models(c, &m, &n);
	if (rc < 0)
		return die(c, rc, "models");
	printf("%-28s %6s %6s %6s %10s %10s %-8s %s\n", "NAME", "SLOTS", "CTX", "VOCAB", "WEIGHTS",
	       "KV", "CHAT", "PATH");
	for (size_t i = 0; i < n; i++)
		printf("%-28s %6u %6u %6u %8.1fMi %8.1fMi %-8s %s\n", m[i].name, m[i].n_slots,
		       m[i].n_ctx, m[i].n_vocab, m[i].weight_bytes / 1048576.0,
		       m[i].kv_bytes / 1048576.0, m[i].chat_family, m[i].path);
	free(m);
	return 0;
}

static int cmd_stats(qd_client *c, bool ps)
{
	qd_stats s;
	int rc = qd_get_stats(c, ps, &s);
	if (rc < 0)
		return die(c, rc, ps ? "ps" : "stats");
	if (ps) {
		printf("%8s %6s %7s %-20s %-8s %7s %7s %7s %8s\n", "ID", "UID", "PID", "MODEL",
		       "STATE", "PROMPT", "GEN", "MAX", "AGE");
		for (size_t i = 0; i < s.n_requests; i++) {
			qd_request_info *r = &s.requests[i];
			printf("%8llu %6u %7u %-20s %-8s %7u %7u %7u %7.1fs\n",
			       (unsigned long long)r->id, r->uid, r->pid, r->model, r->state,
			       r->n_prompt, r->n_generated, r->max_tokens, r->age_s);
		}
	} else {
		printf("uptime %.0f s, %u sessions, %llu requests, rss %.1f MiB\n", s.uptime_s,
		       s.sessions, (unsigned long long)s.requests_total, s.rss_bytes / 1048576.0);
		printf("%-28s %7s %6s %9s %10s %10s %8s %10s %16s %11s\n", "MODEL", "RUNNING",
		       "QUEUED", "SLOTS", "DONE", "TOKENS", "TOK/S", "KV", "HOST US/TOK", "FWD US/TOK");
		for (size_t i = 0; i < s.n_models; i++) {
			qd_model_stats *m = &s.models[i];
			char slots[32];
			snprintf(slots, sizeof slots, "%u/%u", m->slots_used, m->slots);
			printf("%-28s %7u %6u %9s %10llu %10llu %8.1f %8.1fMi %7.2f (%5.2f) %11.1f\n",
			       m->name, m->running, m->queued, slots,
			       (unsigned long long)m->requests_done,
			       (unsigned long long)m->tokens_generated, m->tokens_per_second,
			       m->kv_bytes / 1048576.0, m->host_us_per_token, m->sample_us_per_token,
			       m->compute_us_per_token);
		}
	}
	qd_stats_free(&s);
	return 0;
}

int main(int argc, char **argv)
{
	const char *sock = NULL;
	int i = 1;
	for (; i < argc && argv[i][0] == '-'; i++) {
		if (!strcmp(argv[i], "--socket") && i + 1 < argc)
			sock = argv[++i];
		else if (!strncmp(argv[i], "--socket=", 9))
			sock = argv[i] + 9;
		else if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
			usage(stdout);
			return 0;
		} else {
			usage(stderr);
			return 2;
		}
	}
	if (i >= argc) {
		usage(stderr);
		return 2;
	}
	const char *cmd = argv[i];
	int sub_argc = argc - i;
	char **sub_argv = argv + i;
	static const char *const cmds[] = { "generate", "chat", "models", "ps", "stats", "load",
					    "unload", "health", "tokenize", "detokenize", NULL };
	bool known = false;
	for (int k = 0; cmds[k]; k++)
		known |= !strcmp(cmd, cmds[k]);
	if (!known) {
		fprintf(stderr, "quantctl: unknown command '%s'\n", cmd);
		usage(stderr);
		return 2;
	}
	struct sigaction sa = { .sa_handler = on_sigint }; /* no SA_RESTART: waits see EINTR */
	sigaction(SIGINT, &sa, NULL);

	char err[512];
	qd_client *c;
	int rc = qd_connect(sock, &c, err, sizeof err);
	if (rc < 0) {
		fprintf(stderr, "quantctl: %s\n", err);
		return exit_code(rc);
	}
	if (!strcmp(cmd, "generate"))
		rc = cmd_generate(c, sub_argc, sub_argv);
	else if (!strcmp(cmd, "chat"))
		rc = cmd_chat(c, sub_argc, sub_argv);
	else if (!strcmp(cmd, "models"))
		rc = cmd_models(c);
	else if (!strcmp(cmd, "tokenize"))
		rc = cmd_tokenize(c, sub_argc, sub_argv);
	else if (!strcmp(cmd, "detokenize"))
		rc = cmd_detokenize(c, sub_argc, sub_argv);
	else if (!strcmp(cmd, "ps") || !strcmp(cmd, "stats"))
		rc = cmd_stats(c, !strcmp(cmd, "ps"));
	else if (!strcmp(cmd, "load")) {
		CmdOpts o = { 0 };
		if (parse_cmd_opts(sub_argc, sub_argv, &o) < 0 || optind + 1 != sub_argc) {
			usage(stderr);
			rc = 2;
		} else {
			char path[4096];
			const char *p = sub_argv[optind];
			if (p[0] != '/' && realpath(p, path))
				p = path;
			qd_model_info mi;
			rc = qd_load(c, p, o.name, o.slots, o.ctx, &mi);
			if (rc < 0)
				rc = die(c, rc, "load");
			else
				printf("loaded %s: %u slots x %u positions, KV %.1f MiB\n", mi.name,
				       mi.n_slots, mi.n_ctx, mi.kv_bytes / 1048576.0);
		}
	} else if (!strcmp(cmd, "unload")) {
		if (sub_argc != 2) {
			usage(stderr);
			rc = 2;
		} else {
			rc = qd_unload(c, sub_argv[1]);
			rc = rc < 0 ? die(c, rc, "unload") : 0;
		}
	} else {
		qd_health h;
		rc = qd_get_health(c, &h);
		if (rc < 0) {
			rc = die(c, rc, "health");
		} else {
			printf("%s: %s, %u model%s, engine heartbeat %.1f s ago\n",
			       h.ok ? "ok" : "NOT OK", h.status, h.models_loaded,
			       h.models_loaded == 1 ? "" : "s", h.engine_heartbeat_age_s);
			rc = h.ok ? 0 : 1;
		}
	}
	qd_close(c);
	return rc;
}

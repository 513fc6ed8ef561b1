/* quantd.h: client library for the quantd daemon (libquantd).
 *
 * A qd_client is one session: a control connection plus shared-memory rings through which
 * prompts go to the daemon and tokens come back.  Tokens never cross the socket, and
 * reading one allocates nothing.
 *
 * Errors: functions return 0 or a negative errno; qd_errmsg() then says why in words
 * (the daemon's message when it refused, e.g. "model smol is busy: 16 requests running,
 * 64 queued" with -EBUSY).  Common codes: -ENOENT / -ECONNREFUSED (daemon not running),
 * -EACCES (not allowed), -EBUSY (queue full), -EDQUOT (per-user limit), -ENOMEM (model
 * does not fit), -EPROTO (protocol violation), -ESHUTDOWN (daemon stopping).
 *
 * Threads: a handle is not thread-safe; use one handle per thread (handles are cheap:
 * an idle session costs the daemon its ring pages only when touched).
 *
 * Build: pkg-config --cflags --libs quantd */
#ifndef QUANTD_H
#define QUANTD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(QD_BUILDING_LIB)
#define QD_API __attribute__((visibility("default")))
#else
#define QD_API
#endif

#define QD_DEFAULT_SOCKET "/run/quantd/quantd.sock"

typedef struct qd_client qd_client;

/* Connects to PATH (NULL: $QUANTD_SOCKET, else QD_DEFAULT_SOCKET) and opens a session.
 * On failure returns -errno and, when ERRBUF is not NULL, a message in it. */
QD_API int qd_connect(const char *path, qd_client **ret, char *errbuf, size_t errlen);
QD_API void qd_close(qd_client *c); /* NULL-safe; running requests of this session are cancelled */
/* Message for the last failed call on C ("" if none). */
QD_API const char *qd_errmsg(const qd_client *c);

typedef struct {
	const char *model;       /* NULL or "": the daemon's first model */
	float temperature;       /* 0: greedy */
	int top_k;               /* 0: off */
	float top_p;             /* 0 or 1: off */
	float min_p;             /* 0: off */
	float repeat_penalty;    /* 0 or 1: off */
	int repeat_last_n;       /* 0: 64 */
	uint64_t seed;
	uint32_t max_tokens;     /* 0: the daemon's limit */
	const char *const *stop; /* up to 8 strings of 1..64 bytes */
	size_t n_stop;
	bool logprobs;
} qd_gen_params;

/* Greedy, default model, daemon's max_tokens, no stop strings. */
QD_API void qd_gen_params_init(qd_gen_params *p);

typedef struct {
	const char *role;    /* "system", "user" or "assistant" */
	const char *content;
} qd_chat_msg;

enum qd_event_kind { QD_EVENT_TOKEN = 1, QD_EVENT_FINAL = 2 };

enum qd_finish_reason {
	QD_FINISH_REASON_EOG = 1, QD_FINISH_REASON_LENGTH, QD_FINISH_REASON_STOP,
	QD_FINISH_REASON_CANCELLED, QD_FINISH_REASON_CONTEXT, QD_FINISH_REASON_ERROR,
	QD_FINISH_REASON_SHUTDOWN, QD_FINISH_REASON_UNLOADED,
};

typedef struct {
	int kind;                /* enum qd_event_kind */
	uint64_t request_id;
	uint64_t t_daemon_ns;    /* CLOCK_MONOTONIC when the daemon wrote it */
	/* QD_EVENT_TOKEN */
	int32_t token;
	float logprob;
	uint32_t index;
	const char *piece;       /* not NUL-terminated; valid until the next qd_next() */
	size_t piece_len;
	/* QD_EVENT_FINAL */
	int finish;              /* enum qd_finish_reason */
	int error;               /* positive errno when finish is ERROR */
	uint32_t n_prompt, n_generated;
	uint64_t queue_ns, prefill_ns, decode_ns;
} qd_event;

QD_API const char *qd_finish_name(int finish); /* "eog", "length", ... */

/* Starts generating from PROMPT (UTF-8; special tokens such as <|im_start|> are
 * recognized).  Events then come from qd_next(); several requests may run at once on one
 * handle, their events interleaved (match request_id).  Returns 0 with *ret_id. */
QD_API int qd_generate(qd_client *c, const char *prompt, const qd_gen_params *p, uint64_t *ret_id);
/* The same for a conversation; the daemon applies the model's chat template. */
QD_API int qd_generate_chat(qd_client *c, const qd_chat_msg *msgs, size_t n, const qd_gen_params *p,
		     uint64_t *ret_id);

/* Iterator: waits up to TIMEOUT_MS (-1: forever) for the next token or final record of
 * any request of this session.  Returns 0 with *ev filled, -ETIMEDOUT, -EINTR when a
 * signal arrived (the caller may then cancel), or -EPROTO. */
QD_API int qd_next(qd_client *c, qd_event *ev, int timeout_ms);

/* Callback form: runs PROMPT to completion, calling CB for each event of this request
 * (events of other requests on the handle are dropped).  CB returns non-zero to cancel
 * (generation stops within a token; the final record still arrives).  *ret_final
 * (may be NULL) gets the final record.  Returns 0 or -errno. */
typedef int (*qd_event_cb)(const qd_event *ev, void *user);
QD_API int qd_generate_stream(qd_client *c, const char *prompt, const qd_gen_params *p,
		       qd_event_cb cb, void *user, qd_event *ret_final);

/* Stops a request; its final record (finish CANCELLED) follows through qd_next().
 * -ENOENT when it already finished. */
QD_API int qd_cancel(qd_client *c, uint64_t request_id);

typedef struct {
	char name[128];
	char path[4096];
	char chat_family[32];
	uint32_t n_ctx, n_vocab, n_slots;
	uint64_t weight_bytes, kv_bytes;
} qd_model_info;

/* Loaded models into a malloc'd array (free with free()). */
QD_API int qd_models(qd_client *c, qd_model_info **ret, size_t *ret_n);
/* Needs an admin uid.  PATH absolute; NAME, n_slots, n_ctx may be NULL/0 for defaults. */
QD_API int qd_load(qd_client *c, const char *path, const char *name, uint32_t n_slots, uint32_t n_ctx,
	    qd_model_info *ret_info);
QD_API int qd_unload(qd_client *c, const char *name);

typedef struct {
	char name[128];
	uint32_t running, queued, slots_used, slots;
	uint64_t tokens_generated, prompt_tokens, requests_done, kv_bytes;
	double tokens_per_second;
	/* the daemon's own work per generated token outside the forward pass, and the
	 * sampling part of it, in microseconds */
	double host_us_per_token, sample_us_per_token;
	/* the engine thread's CPU time inside the forward pass per generated token (its
	 * helper threads not counted), in microseconds */
	double compute_us_per_token;
} qd_model_stats;

typedef struct {
	uint64_t id, session_id;
	uint32_t uid, pid, n_prompt, n_generated, max_tokens;
	char model[128];
	char state[16];
	double age_s;
} qd_request_info;

typedef struct {
	uint32_t sessions;
	double uptime_s;
	uint64_t rss_bytes, requests_total;
	size_t n_models, n_requests;
	qd_model_stats *models;      /* [n_models] */
	qd_request_info *requests;   /* [n_requests], only when asked for */
} qd_stats;

/* Fills *ret (free with qd_stats_free). */
QD_API int qd_get_stats(qd_client *c, bool with_requests, qd_stats *ret);
QD_API void qd_stats_free(qd_stats *s);

typedef struct {
	bool ok;
	char status[64];
	uint32_t models_loaded;
	double engine_heartbeat_age_s;
} qd_health;

QD_API int qd_get_health(qd_client *c, qd_health *ret);

/* Token ids of LEN bytes of TEXT under MODEL's tokenizer (NULL or "": the first model),
 * special tokens recognized as in a prompt; BOS first when ADD_BOS and the model uses one.
 * *ret is malloc'd (free it; non-NULL even when *ret_n is 0).  Text and ids each travel in
 * one control packet: -E2BIG when either does not fit (keep TEXT under about 8 KiB). */
QD_API int qd_tokenize(qd_client *c, const char *model, const char *text, size_t len,
		       bool add_bos, int32_t **ret, size_t *ret_n);
/* Text of the N ids at IDS (control tokens rendered when SHOW_SPECIAL, else dropped).
 * *ret is malloc'd and NUL-terminated (*ret_len does not count the NUL).  -EINVAL for an id
 * outside the vocabulary, -E2BIG when the ids or the text do not fit one packet. */
QD_API int qd_detokenize(qd_client *c, const char *model, const int32_t *ids, size_t n,
			 bool show_special, char **ret, size_t *ret_len);

#ifdef __cplusplus
}
#endif
#endif

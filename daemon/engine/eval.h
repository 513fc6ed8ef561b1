/* daemon/engine/eval.h: what a precision costs: perplexity on a text, and against a base
 * model the KL-divergence of next-token distributions and the share of positions where
 * both pick the same top token (llama.cpp's tools/perplexity method), plus size, bits per
 * weight and batch-1 decode speed.
 *
 * Perplexity: the text is tokenized once (every model must tokenize it identically) and
 * cut into non-overlapping windows of n_ctx tokens; each window is decoded from an empty
 * cache and only the second half is scored (position i, i >= n_ctx/2, predicts token
 * i+1), so every scored token sees at least n_ctx/2 tokens of context.
 *
 * All models advance window by window together, so the base model's log-probabilities are
 * held for one window only (n_ctx/2 x n_vocab floats).
 *
 * Threads: eval_run() runs on the caller's thread; each model's Context has its own
 * workers.  Callbacks are called on the caller's thread. */
#ifndef QD_ENGINE_EVAL_H
#define QD_ENGINE_EVAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct {
	int n_ctx;         /* window length in tokens (default 512) */
	int max_windows;   /* 0: as many as the text holds */
	int n_threads;     /* per model; <= 0: online CPUs */
	const char *backend; /* "cpu" (NULL), "cuda", "auto" */
	int decode_tokens; /* batch-1 decode steps timed per model (default 32; 0: skip) */
	void (*progress)(void *arg, int windows_done, int windows_total);
	void *cb_arg;
} EvalParams;

typedef struct {
	char name[64];      /* model_name() */
	char type[16];      /* quantize.type, else from general.file_type, else the layers' type */
	char method[16];    /* quantize.method, else "-" */
	uint64_t size_bytes; /* file size */
	double bpw;         /* 8 x tensor bytes / tensor elements */
	double ppl;         /* exp(mean negative log-likelihood) */
	double ppl_err;     /* standard error of ppl (delta method over token NLLs) */
	double kld;         /* mean KL(base || model) in nats; NaN without a base */
	double top1;        /* share of positions with the base's top token; NaN without a base */
	double tok_s;       /* batch-1 decode tokens/s; 0 when not measured */
	int n_scored;       /* tokens scored */
} EvalResult;

EvalParams eval_default_params(void);

/* Evaluates the N models at PATHS on TEXT (LEN bytes).  BASE_IDX names the base model
 * among them (-1: none; KLD and top-1 need one).  Fills ret[0..n).  Returns 0, or -errno
 * with err filled: -EINVAL (bad parameters, text shorter than one window, models that
 * tokenize the text differently or have different vocabularies), errors of model_load
 * and ctx_new/ctx_decode. */
int eval_run(const char *const *paths, int n, int base_idx, const char *text, size_t len,
	     const EvalParams *p, EvalResult *ret, char *err, size_t errlen);

/* Writes an SVG scatter plot of KLD (log scale) against bits per weight, one labelled
 * point per result with a finite, positive KLD.  Returns 0, -EINVAL when none has one, or
 * -errno from writing PATH. */
int eval_plot_svg(const EvalResult *r, int n, const char *title, const char *path);

#endif

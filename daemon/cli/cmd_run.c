/* daemon/cli/cmd_run.c: `quantd run`: load a model, answer one prompt, stream the text to
 * stdout and the timings to stderr. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "../engine/chat.h"
#include "../engine/model.h"
#include "../engine/sampler.h"
#include "cli_util.h"
#include "commands.h"

static void usage(FILE *f)
{
	fprintf(f,
		"usage: quantd run -m MODEL -p PROMPT [options]\n"
		"  -m, --model FILE        GGUF model\n"
		"  -p, --prompt TEXT       prompt (or -f FILE)\n"
		"  -f, --file FILE         read the prompt from FILE\n"
		"      --chat              wrap the prompt in the model's chat template\n"
		"      --system TEXT       system message (with --chat; default: none, as llama.cpp's\n"
		"                          built-in templates do)\n"
		"      --default-system    use the system message the model's template embeds, if any\n"
		"  -n, --n-predict N       tokens to generate (default 256; -1: until the context is full)\n"
		"      --temp T            temperature (default 0.8; 0: greedy)\n"
		"      --top-k K           (default 40; 0: off)\n"
		"      --top-p P           (default 0.95; 1: off)\n"
		"      --min-p P           (default 0.05; 0: off)\n"
		"      --repeat-penalty R  (default 1.0: off)\n"
		"      --repeat-last-n N   (default 64)\n"
		"      --seed S            random seed (default: random, printed to stderr)\n"
		"  -t, --threads N         worker threads (default: all CPUs)\n"
		"  -c, --ctx N             context length (default min(training context, 4096))\n"
		"  -b, --batch N           prompt tokens per forward pass (default 512)\n"
		"      --special           print control tokens such as <|im_end|>\n"
		"      --backend B         cpu, cuda or auto (default cpu; auto: GPU when usable)\n"
		"      --device N          GPU index for cuda/auto (default 0)\n");
}

enum { OPT_CHAT = 256, OPT_SYSTEM, OPT_TEMP, OPT_TOPK, OPT_TOPP, OPT_MINP, OPT_RP, OPT_RLN, OPT_SEED, OPT_SPECIAL, OPT_DEFSYS, OPT_BACKEND, OPT_DEVICE };

int cmd_run(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "model", required_argument, 0, 'm' },	    { "prompt", required_argument, 0, 'p' },
		{ "file", required_argument, 0, 'f' },	    { "chat", no_argument, 0, OPT_CHAT },
		{ "system", required_argument, 0, OPT_SYSTEM }, { "n-predict", required_argument, 0, 'n' },
		{ "temp", required_argument, 0, OPT_TEMP }, { "top-k", required_argument, 0, OPT_TOPK },
		{ "top-p", required_argument, 0, OPT_TOPP }, { "min-p", required_argument, 0, OPT_MINP },
		{ "repeat-penalty", required_argument, 0, OPT_RP }, { "repeat-last-n", required_argument, 0, OPT_RLN },
		{ "seed", required_argument, 0, OPT_SEED }, { "threads", required_argument, 0, 't' },
		{ "ctx", required_argument, 0, 'c' },	    { "batch", required_argument, 0, 'b' },
		{ "special", no_argument, 0, OPT_SPECIAL }, { "default-system", no_argument, 0, OPT_DEFSYS }, { "help", no_argument, 0, 'h' },
		{ "backend", required_argument, 0, OPT_BACKEND }, { "device", required_argument, 0, OPT_DEVICE },
		{ 0, 0, 0, 0 },
	};
	const char *model_path = NULL, *prompt = NULL, *prompt_file = NULL, *system = NULL;
	bool chat = false, special = false, seed_set = false, def_sys = false;
	long n_predict = 256, threads = 0, n_ctx = 0, n_batch = 512, device = 0;
	const char *backend = "cpu";
	SamplerParams sp = sampler_defaults();
	int c;
	optind = 1;
	while ((c = getopt_long(argc, argv, "m:p:f:n:t:c:b:h", opts, NULL)) != -1) {
		int r = 0;
		switch (c) {
		case 'm': model_path = optarg; break;
		case 'p': prompt = optarg; break;
		case 'f': prompt_file = optarg; break;
		case OPT_CHAT: chat = true; break;
		case OPT_SYSTEM: system = optarg; break;
		case OPT_SPECIAL: special = true; break;
		case OPT_DEFSYS: def_sys = true; break;
		case OPT_BACKEND:
			backend = optarg;
			if (strcmp(optarg, "cpu") && strcmp(optarg, "cuda") && strcmp(optarg, "auto"))
				r = -EINVAL;
			break;
		case OPT_DEVICE: r = cli_parse_long(optarg, 0, 1024, &device); break;
		case 'n': r = cli_parse_long(optarg, -1, 1 << 24, &n_predict); break;
		case 't': r = cli_parse_long(optarg, 0, 1024, &threads); break;
		case 'c': r = cli_parse_long(optarg, 0, 1 << 22, &n_ctx); break;
		case 'b': r = cli_parse_long(optarg, 1, 1 << 16, &n_batch); break;
		case OPT_TEMP: r = cli_parse_float(optarg, 0, 100, &sp.temp); break;
		case OPT_TOPK: { long k; r = cli_parse_long(optarg, 0, 1 << 24, &k); sp.top_k = (int)k; break; }
		case OPT_TOPP: r = cli_parse_float(optarg, 0, 1, &sp.top_p); break;
		case OPT_MINP: r = cli_parse_float(optarg, 0, 1, &sp.min_p); break;
		case OPT_RP: r = cli_parse_float(optarg, 0.01f, 100, &sp.repeat_penalty); break;
		case OPT_RLN: { long k; r = cli_parse_long(optarg, 0, 1 << 20, &k); sp.repeat_last_n = (int)k; break; }
		case OPT_SEED: {
			unsigned long long s;
			r = cli_parse_u64(optarg, &s);
			sp.seed = s;
			seed_set = true;
			break;
		}
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
		if (r < 0) {
			fprintf(stderr, "quantd run: bad value for %s: '%s'\n", argv[optind - 1], optarg);
			return 2;
		}
	}
	if (!model_path || (!prompt && !prompt_file) || (prompt && prompt_file) || optind != argc) {
		usage(stderr);
		return 2;
	}
	char *file_text = NULL;
	if (prompt_file) {
		int r = cli_read_file(prompt_file, 64 << 20, &file_text, NULL);
		if (r < 0) {
			fprintf(stderr, "quantd: %s: %s\n", prompt_file, strerror(-r));
			return 1;
		}
		prompt = file_text;
	}
	if (!seed_set && getrandom(&sp.seed, sizeof(sp.seed), 0) != sizeof(sp.seed))
		sp.seed = (uint64_t)time(NULL);

	int status = 1, r;
	char err[512] = "";
	Model *m = NULL;
	Context *ctx = NULL;
	Sampler *smp = NULL;
	char *rendered = NULL;
	int32_t *ids = NULL;
	double t0 = cli_now();
	if ((r = model_load(model_path, &m, err, sizeof(err))) < 0) {
		fprintf(stderr, "quantd: %s: %s\n", model_path, err);
		goto out;
	}
	char why[320] = "";
	ContextParams cp = { .n_seq = 1, .n_ctx = (int)n_ctx, .n_batch = (int)n_batch, .n_threads = (int)threads,
			      .backend = backend, .device = (int)device, .err = why, .errlen = sizeof why };
	if ((r = ctx_new(m, &cp, &ctx)) < 0) {
		fprintf(stderr, "quantd: cannot create a context (backend %s): %s\n", backend,
			r == -ENODEV ? "no usable GPU" : why[0] ? why : strerror(-r));
		goto out;
	}
	double t_load = cli_now() - t0;
	const Tokenizer *tok = model_tokenizer(m);
	const char *text = prompt;
	if (chat) {
		ChatMsg msgs[2];
		size_t nm = 0;
		if (system)
			msgs[nm++] = (ChatMsg){ "system", system };
		msgs[nm++] = (ChatMsg){ "user", prompt };
		int fam = chat_detect(model_gguf(m), NULL);
		if (fam == CHAT_CHATML_FALLBACK)
			fprintf(stderr, "quantd: warning: no known chat template in the model, using ChatML\n");
		if ((r = chat_render(fam, def_sys ? model_gguf(m) : NULL, msgs, nm, true, &rendered)) < 0) {
			fprintf(stderr, "quantd: chat template: %s\n", strerror(-r));
			goto out;
		}
		text = rendered;
	}
	int n_ids = tok_encode(tok, text, strlen(text), tok_add_bos(tok), true, NULL, 0);
	if (n_ids < 0) {
		fprintf(stderr, "quantd: tokenizing the prompt: %s\n", strerror(-n_ids));
		goto out;
	}
	const int n_ctx_real = ctx_n_ctx(ctx);
	if (n_ids == 0 || n_ids >= n_ctx_real) {
		fprintf(stderr, "quantd: the prompt has %d tokens; the context holds %d\n", n_ids, n_ctx_real);
		goto out;
	}
	ids = malloc(sizeof(int32_t) * (size_t)n_ctx_real);
	if (!ids || tok_encode(tok, text, strlen(text), tok_add_bos(tok), true, ids, (size_t)n_ids) != n_ids) {
		fprintf(stderr, "quantd: out of memory\n");
		goto out;
	}
	if ((r = sampler_new(&sp, model_config(m)->n_vocab, &smp)) < 0) {
		fprintf(stderr, "quantd: sampler: %s\n", strerror(-r));
		goto out;
	}
	for (int i = 0; i < n_ids; i++)
		sampler_accept(smp, ids[i]);

	/* Prompt: chunks of n_batch tokens, logits only for the very last one. */
	double t1 = cli_now();
	int32_t *pos = malloc(sizeof(int32_t) * (size_t)n_batch), *seq = calloc((size_t)n_batch, sizeof(int32_t));
	if (!pos || !seq) {
		free(pos);
		free(seq);
		fprintf(stderr, "quantd: out of memory\n");
		goto out;
	}
	for (int i = 0; i < n_ids && r >= 0; i += (int)n_batch) {
		int n = n_ids - i < n_batch ? n_ids - i : (int)n_batch;
		for (int j = 0; j < n; j++)
			pos[j] = i + j;
		Batch b = { .n_tokens = n, .token = ids + i, .pos = pos, .seq = seq };
		r = ctx_decode(ctx, &b);
	}
	double t_prompt = cli_now() - t1;
	if (r < 0) {
		fprintf(stderr, "quantd: forward pass: %s\n", strerror(-r));
		free(pos);
		free(seq);
		goto out;
	}

	double t2 = cli_now();
	int n_gen = 0, cur = n_ids;
	const char *finish = "length";
	char piece[256];
	/* Greedy: each step is queued before the last one's token is read (ctx_decode_ahead),
	 * its token that one, taken where the model runs: a GPU goes from step to step without
	 * waiting for this thread.  The step queued behind the stop token is dropped. */
	const bool greedy = sampler_is_greedy(smp);
	int queued = 0; /* greedy: a step is queued whose token is not read yet */
	int32_t next = sampler_sample_known(smp, ctx_logits(ctx, 0), ctx_argmax(ctx, 0));
	while (n_predict < 0 || n_gen < n_predict) {
		sampler_accept(smp, next);
		n_gen++;
		if (tok_is_eog(tok, next)) {
			finish = "stop";
			break;
		}
		int len = tok_piece(tok, next, special, piece, sizeof(piece));
		if (len > 0)
			fwrite(piece, 1, (size_t)(len < (int)sizeof(piece) ? len : (int)sizeof(piece)), stdout);
		fflush(stdout);
		if (n_predict >= 0 && n_gen >= n_predict)
			break;
		if (!queued) { /* the step of NEXT, its token from here */
			if (cur >= n_ctx_real) {
				finish = "context full";
				break;
			}
			Batch b = { .n_tokens = 1, .token = &next, .pos = &cur, .seq = seq };
			if ((r = greedy ? ctx_decode_ahead(ctx, &b) : ctx_decode(ctx, &b)) < 0)
				break;
			cur++;
		}
		if (greedy) { /* the step after, fed by that one's token, unless it would pass a limit */
			queued = cur < n_ctx_real && (n_predict < 0 || n_gen + 1 < n_predict);
			Batch b = { .n_tokens = 1, .token = NULL, .pos = &cur, .seq = seq };
			if ((r = queued ? ctx_decode_ahead(ctx, &b) : ctx_decode_flush(ctx)) < 0)
				break;
			cur += queued;
		}
		if ((next = sampler_sample_known(smp, ctx_logits(ctx, 0), ctx_argmax(ctx, 0))) < 0) {
			r = next;
			break;
		}
	}
	if (r < 0)
		fprintf(stderr, "\nquantd: forward pass: %s\n", strerror(-r));
	if (queued)
		(void)ctx_decode_flush(ctx);
	double t_gen = cli_now() - t2;
	free(pos);
	free(seq);
	printf("\n");
	fflush(stdout);
	/* The first sampled token came from the prompt's logits: decode passes = n_gen - 1. */
	int n_dec = n_gen > 1 ? n_gen - 1 : 0;
	fprintf(stderr,
		"\nquantd: %s | %s | load %.0f ms | prompt %d tokens, %.1f tok/s | decode %d tokens, %.1f tok/s | finish: %s | seed %llu\n",
		model_name(m), ctx_backend_name(ctx), t_load * 1e3, n_ids, n_ids / (t_prompt > 0 ? t_prompt : 1e-9), n_dec,
		n_dec / (t_gen > 0 ? t_gen : 1e-9), finish, (unsigned long long)sp.seed);
	status = r < 0 ? 1 : 0;
out:
	free(ids);
	free(rendered);
	sampler_free(smp);
	ctx_free(ctx);
	model_free(m);
	free(file_text);
	return status;
}

/* tests/ahead_util.h: greedy steps through ctx_decode_ahead (queued a step ahead, fed by
 * the last step's ids) against the same steps through ctx_decode, for test-model.c (the
 * CPU: each step at its call) and test-steps.c (the GPU: steps back to back, the ids on
 * the device).  Include after CUnit and the engine's model.h. */
#ifndef QD_TESTS_AHEAD_UTIL_H
#define QD_TESTS_AHEAD_UTIL_H

#include <errno.h>
#include <stdio.h>
#include <string.h>

#define AHEAD_MAX_SEQ 4
#define AHEAD_MAX_STEPS 64

/* N_SEQ sequences of different prompts (in one batch), then STEPS greedy steps of all
 * N_SEQ rows, on CS through ctx_decode and on CA through ctx_decode_ahead (fed from its
 * second step on, flushed once half-way and fed again after): every id the same.  Then
 * what ctx_decode_ahead refuses.  Both contexts of one backend, n_seq >= N_SEQ, n_ctx >=
 * 8 + STEPS + 1.  Returns how many ids were compared. */
static int ahead_check(Context *cs, Context *ca, int n_seq, int steps, int n_vocab)
{
	CU_ASSERT_FATAL(n_seq >= 1 && n_seq <= AHEAD_MAX_SEQ && steps >= 4 && steps <= AHEAD_MAX_STEPS);
	int32_t tok[8 * AHEAD_MAX_SEQ], pos[8 * AHEAD_MAX_SEQ], seq[8 * AHEAD_MAX_SEQ];
	uint8_t want[8 * AHEAD_MAX_SEQ];
	int len[AHEAD_MAX_SEQ], k = 0;
	for (int s = 0; s < n_seq; s++) {
		len[s] = 5 + s;
		for (int i = 0; i < len[s]; i++, k++) {
			tok[k] = (int32_t)((17 + 31 * s + 101 * i) % n_vocab);
			pos[k] = i;
			seq[k] = s;
			want[k] = i == len[s] - 1 ? WANT_ARGMAX : WANT_NONE;
		}
	}
	Context *both[2] = { cs, ca };
	int32_t first[AHEAD_MAX_SEQ];
	for (int j = 0; j < 2; j++) {
		for (int s = 0; s < n_seq; s++)
			CU_ASSERT_EQUAL_FATAL(ctx_seq_truncate(both[j], s, 0), 0);
		Batch b = { .n_tokens = k, .token = tok, .pos = pos, .seq = seq, .want_logits = want };
		CU_ASSERT_EQUAL_FATAL(ctx_decode(both[j], &b), 0);
		for (int s = 0; s < n_seq; s++) {
			const int32_t id = ctx_argmax(both[j], s);
			CU_ASSERT_FATAL(id >= 0 && id < n_vocab);
			if (j == 0)
				first[s] = id;
			else
				CU_ASSERT_EQUAL(id, first[s]);
		}
	}
	static int32_t ref[AHEAD_MAX_STEPS][AHEAD_MAX_SEQ], got[AHEAD_MAX_STEPS][AHEAD_MAX_SEQ];
	memset(got, 0xff, sizeof(got));
	int32_t cur[AHEAD_MAX_SEQ], p[AHEAD_MAX_SEQ], sq[AHEAD_MAX_SEQ];
	uint8_t w[AHEAD_MAX_SEQ];
	memcpy(cur, first, sizeof(cur));
	for (int s = 0; s < n_seq; s++) {
		sq[s] = s;
		w[s] = WANT_ARGMAX;
	}
	/* the reference: each step's tokens the ids of the step before, from the host */
	for (int st = 0; st < steps; st++) {
		for (int s = 0; s < n_seq; s++)
			p[s] = len[s] + st;
		Batch b = { .n_tokens = n_seq, .token = cur, .pos = p, .seq = sq, .want_logits = w };
		CU_ASSERT_EQUAL_FATAL(ctx_decode(cs, &b), 0);
		for (int s = 0; s < n_seq; s++)
			cur[s] = ref[st][s] = ctx_argmax(cs, s);
	}
	/* a step ahead: step st's ids come back with step st + 1's call */
	const int half = steps / 2;
	for (int st = 0; st < steps; st++) {
		for (int s = 0; s < n_seq; s++)
			p[s] = len[s] + st;
		Batch b = { .n_tokens = n_seq, .token = st ? NULL : first, .pos = p, .seq = sq };
		const int r = ctx_decode_ahead(ca, &b);
		CU_ASSERT_EQUAL_FATAL(r, st == 0 || st == half + 1 ? 0 : 1);
		for (int s = 0; r == 1 && s < n_seq; s++)
			got[st - 1][s] = ctx_argmax(ca, s);
		if (st == half) { /* read at once; the next step is still fed */
			CU_ASSERT_EQUAL_FATAL(ctx_decode_flush(ca), 1);
			for (int s = 0; s < n_seq; s++)
				got[st][s] = ctx_argmax(ca, s);
		}
	}
	CU_ASSERT_EQUAL_FATAL(ctx_decode_flush(ca), 1);
	for (int s = 0; s < n_seq; s++)
		got[steps - 1][s] = ctx_argmax(ca, s);
	CU_ASSERT_EQUAL(ctx_argmax(ca, n_seq), -1);
	int same = 0;
	for (int st = 0; st < steps; st++)
		for (int s = 0; s < n_seq; s++) {
			same += got[st][s] == ref[st][s];
			if (got[st][s] != ref[st][s])
				printf("\n    ahead: step %d row %d: id %d, stepwise %d", st, s, got[st][s], ref[st][s]);
		}
	CU_ASSERT_EQUAL(same, steps * n_seq);

	/* nothing queued; then what is refused: rows asking for more than their ids, a feed
	 * of another size, and a feed after a plain ctx_decode (which a queued step's ids
	 * do not survive) */
	CU_ASSERT_EQUAL(ctx_decode_flush(ca), 0);
	for (int s = 0; s < n_seq; s++)
		p[s] = len[s] + steps;
	Batch b = { .n_tokens = n_seq, .token = NULL, .pos = p, .seq = sq, .want_logits = w };
	CU_ASSERT_EQUAL(ctx_decode_ahead(ca, &b), -EINVAL);
	b.want_logits = NULL;
	if (n_seq > 1) {
		b.n_tokens = n_seq - 1;
		CU_ASSERT_EQUAL(ctx_decode_ahead(ca, &b), -EINVAL);
		b.n_tokens = n_seq;
	}
	CU_ASSERT_EQUAL(ctx_decode_ahead(ca, &b), 0); /* the feed itself was fine */
	b.token = cur;
	b.want_logits = w;
	for (int s = 0; s < n_seq; s++)
		p[s]++;
	CU_ASSERT_EQUAL(ctx_decode(ca, &b), 0);
	CU_ASSERT_EQUAL(ctx_decode_flush(ca), 0);
	b.token = NULL;
	b.want_logits = NULL;
	for (int s = 0; s < n_seq; s++)
		p[s]++;
	CU_ASSERT_EQUAL(ctx_decode_ahead(ca, &b), -EINVAL);
	return same;
}

#endif

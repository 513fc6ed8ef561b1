/* tests/testutil.h: what every CUnit suite shares: a main() helper that runs in basic mode
 * and exits non-zero on any failure, paths to the build and model, and SKIP reporting. */
#ifndef QD_TESTS_TESTUTIL_H
#define QD_TESTS_TESTUTIL_H

#include <CUnit/Basic.h>
#include <CUnit/CUnit.h>
#include <stdbool.h>
#include <stdint.h>

typedef struct {
	const char *name;
	CU_TestFunc fn;
	/* Optional: returns NULL when the test can run, else why not.  Such a test is not run:
	 * it is printed as "SKIP: name: why" and counted under CUnit's "Inactive", never as
	 * passed. */
	const char *(*skip_if)(void);
} TuTest;

/* Registers one suite named NAME with TESTS (terminated by {NULL, NULL}), runs everything
 * in basic mode and returns the process exit status (0 only if nothing failed; skipped
 * tests are neither). */
int tu_main(const char *name, const TuTest *tests);

/* Path of the default model ($QD_MODEL or models/SmolLM2-135M-Instruct.Q4_1.gguf). */
const char *tu_model_path(void);
/* Build directory ($QD_BUILD or build). */
const char *tu_build_dir(void);
/* tu_build_dir()/REL, e.g. the GGUFs make builds for the tests (tests/data/NAME.gguf from
 * its text form, tests/gen-gguf.c); valid for the next 3 calls. */
const char *tu_build_path(const char *rel);
/* Prints "SKIP: why" visibly; the test then returns without asserting.  Prefer skip_if,
 * which keeps the test out of the passed count. */
void tu_skip(const char *test, const char *why);

/* Deterministic xorshift random numbers for test data. */
uint64_t tu_rand_u64(uint64_t *state);
float tu_rand_f32(uint64_t *state); /* uniform in [-1, 1) */

/* Whether IDS/VALS (COUNT of them, any order) are exactly ROW's top K: its largest values,
 * NaN and -inf left out, of equal values the lower indices (the rule of every top-k op),
 * found here by sorting the whole row.  ROW has COLS values. */
bool tu_topk_matches(const float *row, int64_t cols, int k, const int32_t *ids, const float *vals, int32_t count);

/* DIR/NAME in a private temporary directory made on first use (/tmp/qd-test.XXXXXX); the
 * result stays valid for the next 3 calls.  NULL if the directory cannot be made. */
const char *tu_tmp_path(const char *name);
/* Removes that directory and everything in it (no-op when none was made). */
void tu_tmp_cleanup(void);

/* Reads a whole file into a malloc'd buffer (NUL-terminated); NULL on error. */
char *tu_read_file(const char *path, size_t *ret_len);

#endif

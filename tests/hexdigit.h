/* tests/hexdigit.h: the value of a lowercase hex digit, for the test data kept as hex text
 * (tests/gen-gguf.c's escapes, test-quant.c's reference vectors).  Header-only: gen-gguf is
 * a tool of its own, without the CUnit test utilities. */
#ifndef QD_TESTS_HEXDIGIT_H
#define QD_TESTS_HEXDIGIT_H

/* 0-15, or -1 for anything else (uppercase too: the files are written lowercase). */
static inline int hex_digit(char c)
{
	return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

#endif

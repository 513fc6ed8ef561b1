/* daemon/cli/cli_util.h: small helpers shared by the subcommands. */
#ifndef QD_CLI_UTIL_H
#define QD_CLI_UTIL_H

#include <stddef.h>

/* Strict number parsing: the whole string, within [lo, hi].  0 or -EINVAL/-ERANGE. */
int cli_parse_long(const char *s, long lo, long hi, long *ret);
int cli_parse_float(const char *s, float lo, float hi, float *ret);
int cli_parse_u64(const char *s, unsigned long long *ret);
/* Reads at most max bytes of PATH into a NUL-terminated malloc'd buffer.  -EFBIG beyond. */
int cli_read_file(const char *path, size_t max, char **ret, size_t *ret_len);
/* Monotonic seconds. */
double cli_now(void);
/* S as a JSON string (quotes, escapes) on stdout. */
void cli_json_str(const char *s);

#endif

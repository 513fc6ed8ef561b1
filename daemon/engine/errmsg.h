/* daemon/engine/errmsg.h: how engine functions report an error to their caller: the
 * reason goes into the caller's buffer (when it gave one), the -errno is returned. */
#ifndef QD_ENGINE_ERRMSG_H
#define QD_ENGINE_ERRMSG_H

#include <stddef.h>

/* Formats FMT into err[errlen] (nothing when errlen is 0) and returns R. */
int qd_errf(char *err, size_t errlen, int r, const char *fmt, ...) __attribute__((format(printf, 4, 5)));

#endif

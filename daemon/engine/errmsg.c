/* daemon/engine/errmsg.c */
#include "errmsg.h"

#include <stdarg.h>
#include <stdio.h>

int qd_errf(char *err, size_t errlen, int r, const char *fmt, ...)
{
	if (errlen) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(err, errlen, fmt, ap);
		va_end(ap);
	}
	return r;
}

/* daemon/log.c */
#include "log.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static bool log_journal;
static int log_max = LOG_INFO;

/* JOURNAL_STREAM is "dev:ino" of the stream journald gave us; it only counts when it is
 * still our stderr (a child of ours may have inherited the variable with another stderr). */
static bool stderr_is_journal(void)
{
	const char *e = getenv("JOURNAL_STREAM");
	unsigned long long dev, ino;
	struct stat st;
	if (!e || sscanf(e, "%llu:%llu", &dev, &ino) != 2 || fstat(STDERR_FILENO, &st) < 0)
		return false;
	return (unsigned long long)st.st_dev == dev && (unsigned long long)st.st_ino == ino;
}

void log_init(int max_priority)
{
	log_journal = stderr_is_journal();
	log_max = max_priority;
}

void log_msg(int prio, const char *fmt, ...)
{
	static const char *const words[] = { "emerg", "alert", "crit", "error", "warning",
					     "notice", "info", "debug" };
	if (prio > log_max)
		return;
	char line[1024];
	int n = log_journal ? snprintf(line, sizeof line, "<%d>", prio)
			    : snprintf(line, sizeof line, "quantd: %s: ", words[prio & 7]);
	va_list ap;
	va_start(ap, fmt);
	int m = vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
	va_end(ap);
	size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
	if (len > sizeof line - 2)
		len = sizeof line - 2;
	line[len++] = '\n';
	ssize_t w = write(STDERR_FILENO, line, len);
	(void)w;
}

/* daemon/log.h: the daemon's log lines on stderr.  Under systemd (JOURNAL_STREAM names
 * our stderr) each line starts with a "<N>" syslog priority prefix that journald turns into
 * the entry's priority; elsewhere lines carry a short level word.  Thread-safe: one write(2)
 * per line.  Only daemon code outside daemon/engine logs; libraries return errors. */
#ifndef QD_DAEMON_LOG_H
#define QD_DAEMON_LOG_H

#include <syslog.h>

/* Detects journald and sets the most verbose priority printed (LOG_INFO by default). */
void log_init(int max_priority);
void log_msg(int prio, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_err(...) log_msg(LOG_ERR, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_WARNING, __VA_ARGS__)
#define log_notice(...) log_msg(LOG_NOTICE, __VA_ARGS__)
#define log_info(...) log_msg(LOG_INFO, __VA_ARGS__)
#define log_debug(...) log_msg(LOG_DEBUG, __VA_ARGS__)

#endif

/* daemon/policy.h: who may use the daemon and how much.  The socket's mode and group are
 * the first gate; this is the second, checked against SO_PEERCRED / SO_PEERGROUPS:
 * allowed uids and gids (empty lists: everyone who can connect), admin uids for
 * LoadModel/UnloadModel (root and the daemon's own uid always), and per-uid limits on
 * sessions, requests in flight and tokens in flight (the sum of their max_tokens).
 * Loop thread only. */
#ifndef QD_DAEMON_POLICY_H
#define QD_DAEMON_POLICY_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#define POLICY_MAX_IDS 64

typedef struct {
	uid_t allow_uid[POLICY_MAX_IDS], admin_uid[POLICY_MAX_IDS];
	gid_t allow_gid[POLICY_MAX_IDS];
	int n_allow_uid, n_allow_gid, n_admin_uid;
	int max_sessions_per_uid;      /* default 64 */
	int max_requests_per_uid;      /* in flight, default 64 */
	int max_requests_per_session;  /* in flight, default 32 */
	uint64_t max_tokens_per_uid;   /* in flight, default 1M */
	uint32_t max_tokens_per_request; /* default 4096 */
	int max_sessions;              /* all uids, default 1024 */
} Policy;

typedef struct UidUse {
	struct UidUse *next;
	uid_t uid;
	int sessions, requests;
	uint64_t tokens;
} UidUse;

void policy_defaults(Policy *p);
/* Parses "123" or a user/group name into *ret.  Returns 0 or -EINVAL. */
int policy_parse_uid(const char *s, uid_t *ret);
int policy_parse_gid(const char *s, gid_t *ret);
bool policy_allows(const Policy *p, uid_t uid, gid_t gid, const gid_t *groups, int n_groups);
bool policy_is_admin(const Policy *p, uid_t uid);
/* The usage record of UID, created on first use (NULL only when out of memory). */
UidUse *policy_use(UidUse **list, uid_t uid);
/* Drops records that count nothing any more. */
void policy_gc(UidUse **list);

#endif

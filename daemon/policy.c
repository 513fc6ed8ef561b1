/* daemon/policy.c */
#include "policy.h"

#include <errno.h>
#include <grp.h>
#include <pwd.h>
#include <stdlib.h>
#include <unistd.h>

void policy_defaults(Policy *p)
{
	*p = (Policy){
		.max_sessions_per_uid = 64, .max_requests_per_uid = 64,
		.max_requests_per_session = 32, .max_tokens_per_uid = 1u << 20,
		.max_tokens_per_request = 4096, .max_sessions = 1024,
	};
}

static int parse_num(const char *s, unsigned long *ret)
{
	char *end;
	errno = 0;
	unsigned long v = strtoul(s, &end, 10);
	if (!*s || *end || errno || v >= (unsigned long)(uid_t)-1)
		return -EINVAL;
	*ret = v;
	return 0;
}

int policy_parse_uid(const char *s, uid_t *ret)
{
	unsigned long v;
	if (parse_num(s, &v) == 0) {
		*ret = (uid_t)v;
		return 0;
	}
	struct passwd *pw = getpwnam(s);
	if (!pw)
		return -EINVAL;
	*ret = pw->pw_uid;
	return 0;
}

int policy_parse_gid(const char *s, gid_t *ret)
{
	unsigned long v;
	if (parse_num(s, &v) == 0) {
		*ret = (gid_t)v;
		return 0;
	}
	struct group *gr = getgrnam(s);
	if (!gr)
		return -EINVAL;
	*ret = gr->gr_gid;
	return 0;
}

bool policy_allows(const Policy *p, uid_t uid, gid_t gid, const gid_t *groups, int n_groups)
{
	if (uid == 0 || uid == geteuid())
		return true;
	if (!p->n_allow_uid && !p->n_allow_gid)
		return true;
	for (int i = 0; i < p->n_allow_uid; i++)
		if (p->allow_uid[i] == uid)
			return true;
	for (int i = 0; i < p->n_allow_gid; i++) {
		if (p->allow_gid[i] == gid)
			return true;
		for (int k = 0; k < n_groups; k++)
			if (groups[k] == p->allow_gid[i])
				return true;
	}
	return false;
}

bool policy_is_admin(const Policy *p, uid_t uid)
{
	if (uid == 0 || uid == geteuid())
		return true;
	for (int i = 0; i < p->n_admin_uid; i++)
		if (p->admin_uid[i] == uid)
			return true;
	return false;
}

UidUse *policy_use(UidUse **list, uid_t uid)
{
	for (UidUse *u = *list; u; u = u->next)
		if (u->uid == uid)
			return u;
	UidUse *u = calloc(1, sizeof *u);
	if (!u)
		return NULL;
	u->uid = uid;
	u->next = *list;
	*list = u;
	return u;
}

void policy_gc(UidUse **list)
{
	for (UidUse **pp = list; *pp;) {
		UidUse *u = *pp;
		if (!u->sessions && !u->requests && !u->tokens) {
			*pp = u->next;
			free(u);
		} else {
			pp = &u->next;
		}
	}
}

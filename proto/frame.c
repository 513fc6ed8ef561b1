/* proto/frame.c: one protobuf-c message per SEQPACKET packet, with SCM_RIGHTS. */
#include "frame.h"

#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static void *arena_alloc(void *data, size_t size)
{
	QdArena *a = data;
	size_t off = (a->used + 15) & ~(size_t)15;
	if (size > a->cap || off > a->cap - size)
		return NULL;
	a->used = off + size;
	return a->buf + off;
}

static void arena_free(void *data, void *ptr)
{
	(void)data;
	(void)ptr;
}

void qd_arena_init(QdArena *a, void *buf, size_t cap)
{
	a->pa.alloc = arena_alloc;
	a->pa.free = arena_free;
	a->pa.allocator_data = a;
	a->buf = buf;
	a->cap = cap;
	a->used = 0;
}

void qd_arena_reset(QdArena *a)
{
	a->used = 0;
}

int qd_frame_send(int fd, const ProtobufCMessage *msg, const int *fds, unsigned nfds)
{
	uint8_t buf[QD_MSG_MAX];
	size_t len = protobuf_c_message_get_packed_size(msg);
	if (len > sizeof buf)
		return -EMSGSIZE;
	protobuf_c_message_pack(msg, buf);
	return qd_frame_send_raw(fd, buf, len, fds, nfds);
}

int qd_frame_send_raw(int fd, const void *buf, size_t len, const int *fds, unsigned nfds)
{
	if (nfds > QD_MSG_FDS)
		return -EINVAL;
	if (len > QD_MSG_MAX)
		return -EMSGSIZE;
	struct iovec iov = { .iov_base = (void *)buf, .iov_len = len };
	union {
		struct cmsghdr h;
		char b[CMSG_SPACE(sizeof(int) * QD_MSG_FDS)];
	} ctl;
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
	if (nfds) {
		memset(&ctl, 0, sizeof ctl);
		mh.msg_control = ctl.b;
		mh.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
		struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
		memcpy(CMSG_DATA(c), fds, sizeof(int) * nfds);
	}
	ssize_t n;
	do
		n = sendmsg(fd, &mh, MSG_NOSIGNAL);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return -errno;
	if ((size_t)n != len) /* SEQPACKET is all or nothing; anything else is a broken peer */
		return -EPROTO;
	return 0;
}

/* Collects SCM_RIGHTS descriptors; closes all of them and fails when there are more than
 * MAXFDS or when anything else arrives. */
static int take_fds(struct msghdr *mh, int *fds, unsigned maxfds, unsigned *ret_nfds)
{
	unsigned n = 0;
	int rc = 0;
	for (struct cmsghdr *c = CMSG_FIRSTHDR(mh); c; c = CMSG_NXTHDR(mh, c)) {
		if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) {
			rc = -EPROTO;
			continue;
		}
		size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		for (size_t i = 0; i < k; i++) {
			int f;
			memcpy(&f, CMSG_DATA(c) + i * sizeof(int), sizeof f);
			if (n < maxfds)
				fds[n++] = f;
			else {
				close(f);
				rc = -EPROTO;
			}
		}
	}
	if (rc < 0 || (mh->msg_flags & MSG_CTRUNC)) {
		for (unsigned i = 0; i < n; i++)
			close(fds[i]);
		return -EPROTO;
	}
	*ret_nfds = n;
	return 0;
}

int qd_frame_recv(int fd, void *buf, size_t cap, size_t *ret_len, int *fds, unsigned maxfds,
		  unsigned *ret_nfds)
{
	union {
		struct cmsghdr h;
		char b[CMSG_SPACE(sizeof(int) * QD_MSG_FDS)];
	} ctl;
	struct iovec iov = { .iov_base = buf, .iov_len = cap };
	struct msghdr mh = {
		.msg_iov = &iov, .msg_iovlen = 1,
		.msg_control = ctl.b, .msg_controllen = sizeof ctl.b,
	};
	ssize_t n = recvmsg(fd, &mh, MSG_CMSG_CLOEXEC);
	if (n < 0)
		return -errno;
	unsigned nfds = 0;
	int rc = take_fds(&mh, fds, maxfds, &nfds);
	if (rc < 0)
		return rc;
	if (mh.msg_flags & MSG_TRUNC) {
		for (unsigned i = 0; i < nfds; i++)
			close(fds[i]);
		return -EMSGSIZE;
	}
	if (n == 0 && nfds == 0)
		return -ECONNRESET; /* SEQPACKET: a zero-length read is the peer's shutdown */
	*ret_len = (size_t)n;
	*ret_nfds = nfds;
	return 0;
}

ProtobufCMessage *qd_frame_unpack(const ProtobufCMessageDescriptor *desc, QdArena *a,
				  const void *buf, size_t len)
{
	if (len > QD_MSG_MAX)
		return NULL;
	return protobuf_c_message_unpack(desc, &a->pa, len, buf);
}

/* proto/frame.h: control-socket framing.  One protobuf-c message per SOCK_SEQPACKET
 * packet, at most QD_MSG_MAX bytes, optionally with file descriptors (SCM_RIGHTS).
 * Received descriptors are always close-on-exec (MSG_CMSG_CLOEXEC).  Unpacking uses a
 * caller-provided bounded arena, so a hostile packet cannot make protobuf-c allocate more
 * than the arena holds; fields still need validating after unpacking (strings, counts). */
#ifndef QD_PROTO_FRAME_H
#define QD_PROTO_FRAME_H

#include <stddef.h>
#include <stdint.h>

#include <protobuf-c/protobuf-c.h>

#include "shm.h"

/* Bounded bump allocator for protobuf_c_message_unpack(); free is a no-op and
 * qd_arena_reset() releases everything at once (never call *_free_unpacked on its messages). */
typedef struct {
	ProtobufCAllocator pa; /* pass &arena.pa to unpack */
	uint8_t *buf;
	size_t cap, used;
} QdArena;

#define QD_ARENA_SIZE (4 * QD_MSG_MAX)

void qd_arena_init(QdArena *a, void *buf, size_t cap);
void qd_arena_reset(QdArena *a);

/* Packs MSG and sends it as one packet on FD, with NFDS descriptors (<= QD_MSG_FDS) when
 * nfds > 0.  Never raises SIGPIPE.  Returns 0, -EMSGSIZE when the packed message exceeds
 * QD_MSG_MAX, -EAGAIN on a non-blocking socket whose buffer is full, or -errno. */
int qd_frame_send(int fd, const ProtobufCMessage *msg, const int *fds, unsigned nfds);

/* Sends LEN already packed bytes the same way. */
int qd_frame_send_raw(int fd, const void *buf, size_t len, const int *fds, unsigned nfds);

/* Receives one packet into BUF (cap bytes) and up to MAXFDS descriptors into FDS.
 * Returns 0 with *ret_len and *ret_nfds set; -ECONNRESET at end of stream; -EMSGSIZE when
 * the packet was longer than cap (MSG_TRUNC); -EPROTO when descriptors were sent but not
 * expected, or too many, or truncated (any received descriptors are closed first);
 * -EAGAIN / -EINTR / -errno from recvmsg. */
int qd_frame_recv(int fd, void *buf, size_t cap, size_t *ret_len, int *fds, unsigned maxfds,
		  unsigned *ret_nfds);

/* Unpacks LEN bytes with DESC into an arena-allocated message; NULL when malformed or
 * when the arena is exhausted. */
ProtobufCMessage *qd_frame_unpack(const ProtobufCMessageDescriptor *desc, QdArena *a,
				  const void *buf, size_t len);

#endif

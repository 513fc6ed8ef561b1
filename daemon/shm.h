/* daemon/shm.h: a session's shared memory as the daemon creates it: a sealed memfd of
 * QD_SHM_SIZE bytes mapped read-write, the header filled in, the daemon's sides of the
 * two rings (consumer of submit, producer of complete) and the two doorbells.
 *
 * Doorbells are pipes, not eventfds: an eventfd has one open file description shared by
 * both processes, so a client could clear O_NONBLOCK on it and saturate the counter (or
 * drain it) to make the daemon's write (or read) block forever.  With a pipe each side
 * holds its own end and its own file status flags; a full pipe just means "already rung".
 *
 * Ownership: created by the loop thread; shared with the engine thread by reference count
 * (shm_ref/shm_unref, atomic): the loop consumes the submit ring, the engine produces into
 * the complete ring and rings the complete doorbell.  The last unref unmaps and closes. */
#ifndef QD_DAEMON_SHM_H
#define QD_DAEMON_SHM_H

#include <stdatomic.h>
#include <stdint.h>

#include "proto/ring.h"

typedef struct {
	_Atomic int refs;
	int memfd;
	int submit_rd;    /* client -> daemon doorbell, our end (read by the loop thread) */
	int complete_wr;  /* daemon -> client doorbell, our end (written by the engine thread) */
	int client_fds[2]; /* the client's ends (submit write, complete read) until sent */
	uint8_t *map;
	QdRing submit;    /* consumer side: loop thread only */
	QdRing complete;  /* producer side: engine thread only */
	_Atomic int dead; /* the session ended: the engine stops writing */
} SessionShm;

/* Creates the memfd (sealed against shrink, grow and further sealing), maps it, writes the
 * header and creates both doorbell pipes (non-blocking, close-on-exec).  Returns 0 and *ret with one reference, or -errno. */
int shm_new(SessionShm **ret);
SessionShm *shm_ref(SessionShm *s);
void shm_unref(SessionShm *s); /* NULL-safe */

/* Closes the client's ends once they were sent (or the session failed). */
void shm_drop_client_fds(SessionShm *s);

/* Rings the client's doorbell if it asked to be woken (engine thread). */
void shm_wake_client(SessionShm *s);
/* Empties our end of the submit doorbell (loop thread). */
void shm_drain_doorbell(SessionShm *s);

#endif

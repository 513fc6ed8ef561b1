/* proto/shm.h: the session's shared memory, as both processes see it.
 *
 * The daemon creates one memfd per session, sizes it to QD_SHM_SIZE, seals it
 * (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL), maps it and passes it to the client with
 * two doorbell pipe ends.  Layout (offsets fixed by this ABI version, never read back from the
 * mapping by the daemon, which must assume the client rewrites any byte at any time):
 *
 *   0                 QdShmHeader (informational: magic, ABI, sizes)
 *   QD_SHM_SUBMIT_CTL   QdRingCtl of the submit ring   (client produces, daemon consumes)
 *   QD_SHM_COMPLETE_CTL QdRingCtl of the complete ring (daemon produces, client consumes)
 *   QD_SHM_SUBMIT_DATA  QD_SUBMIT_CAP bytes of submit ring data
 *   QD_SHM_COMPLETE_DATA QD_COMPLETE_CAP bytes of complete ring data
 *
 * Rings: single producer, single consumer, byte-addressed; head (consumer) and tail
 * (producer) are free-running 64-bit byte counts on separate cache lines; the data index is
 * count & (cap - 1).  Every record is an 8-byte QdRecHdr followed by len payload bytes,
 * padded to 8; records may wrap around the end of the data area.  The producer writes the
 * record, then publishes tail with a release store; the consumer reads tail with an
 * acquire load, copies the record out, then publishes head with a release store.
 *
 * Wakeups: two pipes passed with Welcome (the client gets the submit doorbell's write end
 * and the complete doorbell's read end).  The daemon writes a byte to the complete doorbell
 * after appending records while the client has set complete.consumer_sleeping; the client
 * writes a byte to the submit doorbell after it frees complete-ring space while the daemon
 * has set complete.producer_sleeping (the daemon stalls a request rather than overwrite or
 * block; the client clears the flag when it rings).  Both flags are hints: a wrong value
 * costs a wakeup or a short delay, never safety. */
#ifndef QD_PROTO_SHM_H
#define QD_PROTO_SHM_H

#include <stdalign.h>
#include <stdatomic.h>
#include <stdint.h>

#define QD_SHM_MAGIC 0x4d534451u /* "QDSM" little-endian */
#define QD_ABI_VERSION 2u /* 2: Tokenize/Detokenize, per-token host and compute stats */

#define QD_CACHELINE 64
#define QD_MSG_MAX 16384u          /* control packet cap, bytes */
#define QD_MSG_FDS 3               /* fds passed with Welcome: memfd, submit wr, complete rd */

#define QD_SUBMIT_CAP (256u * 1024)   /* power of two */
#define QD_COMPLETE_CAP (64u * 1024)  /* power of two */
#define QD_PROMPT_MAX (192u * 1024)   /* payload bytes of one prompt record */
#define QD_PIECE_MAX 256u             /* text bytes of one token record */
#define QD_REC_MAX QD_PROMPT_MAX      /* largest payload any record may declare */
#define QD_CHAT_MSGS_MAX 256          /* messages in one chat prompt */

#define QD_SHM_SUBMIT_CTL 256u
#define QD_SHM_COMPLETE_CTL 512u
#define QD_SHM_SUBMIT_DATA 4096u
#define QD_SHM_COMPLETE_DATA (QD_SHM_SUBMIT_DATA + QD_SUBMIT_CAP)
#define QD_SHM_SIZE (QD_SHM_COMPLETE_DATA + QD_COMPLETE_CAP)

typedef struct {
	uint32_t magic;        /* QD_SHM_MAGIC */
	uint32_t abi_version;  /* QD_ABI_VERSION */
	uint64_t size;         /* QD_SHM_SIZE */
	uint32_t submit_ctl, complete_ctl;
	uint32_t submit_data, submit_cap;
	uint32_t complete_data, complete_cap;
} QdShmHeader;

typedef struct {
	alignas(QD_CACHELINE) _Atomic uint64_t head; /* written by the consumer only */
	alignas(QD_CACHELINE) _Atomic uint64_t tail; /* written by the producer only */
	alignas(QD_CACHELINE) _Atomic uint32_t consumer_sleeping; /* set by the consumer */
	_Atomic uint32_t producer_sleeping;                       /* set by the producer */
} QdRingCtl;

_Static_assert(sizeof(QdShmHeader) <= QD_SHM_SUBMIT_CTL, "header overlaps ring control");
_Static_assert(sizeof(QdRingCtl) <= QD_SHM_COMPLETE_CTL - QD_SHM_SUBMIT_CTL, "ctl overlap");
_Static_assert(QD_SHM_COMPLETE_CTL + sizeof(QdRingCtl) <= QD_SHM_SUBMIT_DATA, "ctl overlap");
_Static_assert((QD_SUBMIT_CAP & (QD_SUBMIT_CAP - 1)) == 0, "submit cap not a power of 2");
_Static_assert((QD_COMPLETE_CAP & (QD_COMPLETE_CAP - 1)) == 0, "complete cap not pow2");

/* Every record starts with this; the payload follows, then padding to 8 bytes. */
typedef struct {
	uint32_t len;   /* payload bytes, <= QD_REC_MAX */
	uint16_t type;  /* enum qd_rec_type */
	uint16_t flags; /* 0 */
} QdRecHdr;

#define QD_REC_ALIGN 8u
#define QD_REC_SIZE(len) (sizeof(QdRecHdr) + (((uint64_t)(len) + 7u) & ~(uint64_t)7u))

enum qd_rec_type {
	/* submit ring */
	QD_REC_PROMPT_TEXT = 1,   /* QdPromptRec + UTF-8 text (specials parsed)             */
	QD_REC_PROMPT_CHAT = 2,   /* QdPromptRec + n x (role NUL content NUL), template applied */
	QD_REC_PROMPT_TOKENS = 3, /* QdPromptRec + int32 token ids                          */
	/* complete ring */
	QD_REC_TOKEN = 16,        /* QdTokenRec + piece bytes */
	QD_REC_FINAL = 17,        /* QdFinalRec */
};

typedef struct {
	uint64_t tag; /* echoed by Generate.prompt_tag */
} QdPromptRec;

typedef struct {
	uint64_t request_id;
	uint64_t t_ns;      /* CLOCK_MONOTONIC when the daemon wrote the record */
	int32_t token;
	float logprob;      /* 0 unless Generate.logprobs */
	uint32_t index;     /* 0-based position among the generated tokens */
	uint16_t piece_len; /* text bytes following (may end inside a UTF-8 character) */
	uint16_t flags;
} QdTokenRec;

enum qd_finish {
	QD_FINISH_EOG = 1,       /* the model ended the text */
	QD_FINISH_LENGTH = 2,    /* max_tokens reached */
	QD_FINISH_STOP = 3,      /* a stop string appeared */
	QD_FINISH_CANCELLED = 4, /* Cancel, or the session went away */
	QD_FINISH_CONTEXT = 5,   /* the context window is full */
	QD_FINISH_ERROR = 6,     /* see error */
	QD_FINISH_SHUTDOWN = 7,  /* the daemon is stopping */
	QD_FINISH_UNLOADED = 8,  /* the model was unloaded */
};

typedef struct {
	uint64_t request_id;
	uint64_t t_ns;
	int32_t finish;      /* enum qd_finish */
	int32_t error;       /* positive errno for QD_FINISH_ERROR, else 0 */
	uint32_t n_prompt;
	uint32_t n_generated;
	uint64_t queue_ns;   /* accepted -> first prefill step */
	uint64_t prefill_ns; /* first prefill step -> first generated token */
	uint64_t decode_ns;  /* first generated token -> final record */
} QdFinalRec;

#endif

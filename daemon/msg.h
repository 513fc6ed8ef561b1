/* daemon/msg.h: what travels between the loop thread and the engine thread.  A Task is
 * created by the loop thread and owned by the engine thread once queued; a Result is
 * created by the engine thread and owned by the loop thread once queued.  Nothing else is
 * shared, except SessionShm (reference counted, see shm.h). */
#ifndef QD_DAEMON_MSG_H
#define QD_DAEMON_MSG_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "queue.h"
#include "shm.h"

#define QD_STOP_MAX 8        /* stop strings per request */
#define QD_STOP_LEN 64       /* bytes per stop string */
#define QD_NAME_MAX 128      /* model name bytes */

enum task_kind {
	TASK_GENERATE = 1, /* start a request (reply: GenerateReply or an error) */
	TASK_CANCEL,       /* end one request of a session */
	TASK_SESSION_GONE, /* end all requests of a session silently, drop its shm */
	TASK_WAKE,         /* a client freed complete-ring space */
	TASK_LOAD,
	TASK_UNLOAD,
	TASK_LIST,
	TASK_STATS,
	TASK_HEALTH,
	TASK_SHUTDOWN,     /* finish every request with QD_FINISH_SHUTDOWN and stop */
	TASK_TOKENIZE,     /* model, prompt = text, add_bos */
	TASK_DETOKENIZE,   /* model, prompt = int32 ids, show_special */
};

typedef struct {
	float temp, top_p, min_p, repeat_penalty;
	int32_t top_k, repeat_last_n;
	uint64_t seed;
} TaskSampling;

typedef struct Task {
	QNode node;
	int kind;
	uint64_t conn_id;   /* session that gets the reply (0: none) */
	uint64_t reply_id;  /* Request.id to answer */
	uint64_t session_id;
	uid_t uid;
	pid_t pid;
	uint64_t request_id;     /* GENERATE (assigned by the loop), CANCEL */
	/* GENERATE */
	SessionShm *shm;         /* a reference, owned by the task then by the request */
	char model[QD_NAME_MAX];
	int prompt_type;         /* QD_REC_PROMPT_* */
	uint8_t *prompt;         /* malloc'd copy taken out of the submit ring (GENERATE), or
				  * of the text or ids (TOKENIZE, DETOKENIZE) */
	uint32_t prompt_len;
	TaskSampling sampling;
	uint32_t max_tokens;
	int n_stop;
	char stop[QD_STOP_MAX][QD_STOP_LEN + 1];
	bool logprobs;
	uint64_t t_accept_ns;
	/* LOAD / UNLOAD (name) */
	char path[4096];
	uint32_t n_slots, n_ctx;
	/* TOKENIZE / DETOKENIZE */
	bool add_bos, show_special;
	/* STATS */
	bool list_requests;
	uint32_t n_sessions;     /* filled by the loop for STATS */
} Task;

enum result_kind {
	RESULT_REPLY = 1,  /* send packed bytes to conn_id */
	RESULT_REQ_DONE,   /* a GENERATE request ended: release its quota */
	RESULT_READY,      /* startup models loaded (err says whether all of them did) */
	RESULT_STOPPED,    /* the engine thread finished TASK_SHUTDOWN */
	RESULT_KILL_SESSION, /* the session broke the ring protocol: end it (data: why) */
	RESULT_WAKE,       /* ring these sessions' complete doorbells (data: uint64_t ids) */
};

typedef struct Result {
	QNode node;
	int kind;
	uint64_t conn_id;
	uint64_t session_id;
	uid_t uid;
	uint32_t tokens_reserved; /* REQ_DONE: quota to give back */
	int err;
	size_t len;
	uint8_t data[];           /* REPLY: a packed Quantd__Reply */
} Result;

uint64_t now_ns(void); /* CLOCK_MONOTONIC */
uint64_t thread_cpu_ns(void); /* CPU time of the calling thread */

#endif

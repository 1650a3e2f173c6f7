/*
 * The module's one connection to the enclave app, shared by every thread of the
 * process. Requests carry ids; replies may come back in any order. Whichever
 * waiting thread finds no reader becomes the reader and hands replies to their
 * owners (leader/follower), so no extra thread is started inside the web server.
 */
#ifndef NITRO_ACM_CONN_H
#define NITRO_ACM_CONN_H

#include <stddef.h>
#include <stdint.h>

#include "wire.h"

typedef struct {
  int is_vsock;
  char path[108];
  uint32_t cid, port;
} conn_address;

/* Parses "unix:path=..." or "vsock:cid=N;port=N". 0 on success. */
int conn_parse_address(const char *text, conn_address *out);

void conn_configure(const conn_address *addr, int timeout_ms);
/* Drops the connection (C_Finalize). */
void conn_close(void);
/* In a forked child: forget the parent's connection and waiters without touching them. */
void conn_after_fork_child(void);
/* pthread_atfork's prepare and parent handlers: hold the connection's state lock across fork(). */
void conn_atfork_prepare(void);
void conn_atfork_parent(void);

typedef enum { CONN_OK = 0, CONN_UNREACHABLE, CONN_TIMEOUT, CONN_PROTOCOL } conn_status;

/*
 * Sends one request frame (built by kw_begin_request with the id from conn_next_id)
 * and waits for its reply. On CONN_OK, *reply holds the whole message (free() it).
 */
conn_status conn_call(kw_buf *request, uint32_t id, uint8_t **reply, size_t *reply_len);
uint32_t conn_next_id(void);

#endif

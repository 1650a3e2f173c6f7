#define _GNU_SOURCE
#include "conn.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>
#include <linux/vm_sockets.h>

#include "log.h"

/* After a failed connect, calls fail fast for this long instead of each waiting on connect. */
#define RECONNECT_BACKOFF_MS 200

struct waiter {
  uint32_t id;
  int done;
  conn_status status;
  uint8_t *reply;
  size_t reply_len;
  struct waiter *next;
};

/*
 * One connected socket. Threads that write to it or read from it hold a
 * reference, so dropping a broken connection never closes a descriptor that
 * another thread is still polling (a reused descriptor number would then be
 * read by mistake): drop shuts it down, the last reference closes it.
 */
struct link {
  int fd;
  int refs;
  int proven; /* a reply has come back on it: a failure now means the enclave went away since */
  int rcvtimeo_ms; /* the SO_RCVTIMEO set on fd, 0 before the first read; only the reader touches it */
  /* Bytes received but not yet handed out; used only by the thread in the reader role. */
  uint8_t *rbuf;
  size_t rlen, rcap;
};

static struct {
  pthread_mutex_t mu;       /* guards everything below */
  pthread_mutex_t write_mu; /* one writer at a time on the socket */
  pthread_cond_t cv;        /* broadcast when a reply lands or the reader role frees up */
  conn_address addr;
  int configured;
  int timeout_ms;
  struct link *link; /* current connection, or NULL */
  int reader_active;
  struct waiter *waiters;
  uint32_t next_id;
  struct timespec last_failure;
  int has_failed;
} C = {
  .mu = PTHREAD_MUTEX_INITIALIZER,
  .write_mu = PTHREAD_MUTEX_INITIALIZER,
  .cv = PTHREAD_COND_INITIALIZER,
};

/* Caller holds C.mu. */
static void link_unref_locked(struct link *l)
{
  if (--l->refs > 0) return;
  close(l->fd);
  free(l->rbuf);
  free(l);
}

int conn_parse_address(const char *text, conn_address *out)
{
  memset(out, 0, sizeof *out);
  if (strncmp(text, "unix:path=", 10) == 0) {
    const char *p = text + 10;
    size_t n = strlen(p);
    if (n == 0 || n >= sizeof out->path || strchr(p, ';')) return -1;
    memcpy(out->path, p, n + 1);
    return 0;
  }
  if (strncmp(text, "vsock:", 6) == 0) {
    const char *p = text + 6;
    int have_cid = 0, have_port = 0;
    while (*p) {
      const char *end = strchr(p, ';');
      size_t n = end ? (size_t)(end - p) : strlen(p);
      unsigned long long v;
      char *stop;
      if (n > 4 && strncmp(p, "cid=", 4) == 0) {
        if (have_cid || p[4] < '0' || p[4] > '9') return -1; /* given twice, or not digits (as shared/address.ts) */
        errno = 0;
        v = strtoull(p + 4, &stop, 10);
        if (errno || stop != p + n || v > 0xffffffffULL) return -1;
        out->cid = (uint32_t)v;
        have_cid = 1;
      } else if (n > 5 && strncmp(p, "port=", 5) == 0) {
        if (have_port || p[5] < '0' || p[5] > '9') return -1;
        errno = 0;
        v = strtoull(p + 5, &stop, 10);
        if (errno || stop != p + n || v > 0xffffffffULL) return -1;
        out->port = (uint32_t)v;
        have_port = 1;
      } else if (n != 0) {
        return -1;
      }
      p += n;
      if (*p == ';') p++;
    }
    if (!have_cid || !have_port) return -1;
    out->is_vsock = 1;
    return 0;
  }
  return -1;
}

void conn_configure(const conn_address *addr, int timeout_ms)
{
  pthread_mutex_lock(&C.mu);
  C.addr = *addr;
  C.timeout_ms = timeout_ms;
  C.configured = 1;
  C.has_failed = 0;
  pthread_mutex_unlock(&C.mu);
}

static long ms_since(const struct timespec *t)
{
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  return (now.tv_sec - t->tv_sec) * 1000L + (now.tv_nsec - t->tv_nsec) / 1000000L;
}

static void deadline_in(struct timespec *ts, int ms)
{
  clock_gettime(CLOCK_MONOTONIC, ts);
  ts->tv_sec += ms / 1000;
  ts->tv_nsec += (long)(ms % 1000) * 1000000L;
  if (ts->tv_nsec >= 1000000000L) { ts->tv_sec++; ts->tv_nsec -= 1000000000L; }
}

static int ms_until(const struct timespec *deadline)
{
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  long ms = (deadline->tv_sec - now.tv_sec) * 1000L + (deadline->tv_nsec - now.tv_nsec) / 1000000L;
  return ms < 0 ? 0 : (int)ms;
}

static int conn_write_all(int fd, const uint8_t *p, size_t n, int timeout_ms)
{
  struct timespec deadline;
  deadline_in(&deadline, timeout_ms);
  while (n > 0) {
    ssize_t w = send(fd, p, n, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (w > 0) { p += w; n -= (size_t)w; continue; }
    if (w < 0 && errno == EINTR) continue;
    if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      struct pollfd pfd = { .fd = fd, .events = POLLOUT };
      int left = ms_until(&deadline);
      if (left == 0 || poll(&pfd, 1, left) <= 0) return -1;
      continue;
    }
    return -1;
  }
  return 0;
}

/*
 * Reads the next frame from the link's buffer, receiving more as needed: usually
 * one blocking recv() per reply. -2 on timeout, -1 on close, error or a frame
 * over the limit. Only the thread in the reader role calls this.
 */
static int read_frame(struct link *l, uint8_t **msg, size_t *len, const struct timespec *deadline)
{
  for (;;) {
    if (l->rlen >= 4) {
      uint32_t n = ((uint32_t)l->rbuf[0] << 24) | ((uint32_t)l->rbuf[1] << 16) | ((uint32_t)l->rbuf[2] << 8) | l->rbuf[3];
      if (n < KW_RESPONSE_HEADER || n > KW_MAX_RESPONSE) {
        nacm_log("nitro-acm-p11: reply frame of %u bytes is outside %d..%u; dropping the connection", n, KW_RESPONSE_HEADER, KW_MAX_RESPONSE);
        return -1;
      }
      if (l->rlen - 4 >= n) {
        uint8_t *p = malloc(n);
        if (!p) return -1;
        memcpy(p, l->rbuf + 4, n);
        l->rlen -= 4 + (size_t)n;
        memmove(l->rbuf, l->rbuf + 4 + n, l->rlen);
        *msg = p;
        *len = n;
        return 0;
      }
      if (l->rcap < 4 + (size_t)n) {
        uint8_t *grown = realloc(l->rbuf, 4 + (size_t)n);
        if (!grown) return -1;
        l->rbuf = grown;
        l->rcap = 4 + (size_t)n;
      }
    }
    if (l->rcap - l->rlen < 4096) {
      size_t cap = l->rcap ? l->rcap * 2 : 16384;
      uint8_t *grown = realloc(l->rbuf, cap);
      if (!grown) return -1;
      l->rbuf = grown;
      l->rcap = cap;
    }
    int left = ms_until(deadline);
    if (left == 0) return -2; /* (an SO_RCVTIMEO of 0 would mean no timeout at all) */
    /*
     * A recv() that blocks until the reply or the deadline, where a poll() then a
     * recv() took two system calls on every signature (bench/round-trip.c: the
     * poll cost the caller 0.3-5 µs of CPU). The socket's timeout never exceeds
     * what is left of this call; it is set again only when it must shrink to
     * the deadline or an earlier call shrank it, so a call usually sets nothing.
     */
    if (l->rcvtimeo_ms > left || l->rcvtimeo_ms < left - 50) {
      struct timeval tv = { .tv_sec = left / 1000, .tv_usec = (left % 1000) * 1000 };
      if (setsockopt(l->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) != 0) return -1;
      l->rcvtimeo_ms = left;
    }
    ssize_t r = recv(l->fd, l->rbuf + l->rlen, l->rcap - l->rlen, 0);
    if (r > 0) { l->rlen += (size_t)r; continue; }
    /* EAGAIN: the timeout passed; the deadline is checked again above. */
    if (r < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)) continue;
    return -1;
  }
}

static int open_socket(const conn_address *a, int timeout_ms)
{
  int fd;
  if (a->is_vsock) {
    fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    struct timeval tv = { .tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000 };
    (void)setsockopt(fd, AF_VSOCK, SO_VM_SOCKETS_CONNECT_TIMEOUT, &tv, sizeof tv);
    struct sockaddr_vm sa;
    memset(&sa, 0, sizeof sa);
    sa.svm_family = AF_VSOCK;
    sa.svm_cid = a->cid;
    sa.svm_port = a->port;
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) { close(fd); return -1; }
  } else {
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;
    memcpy(sa.sun_path, a->path, strlen(a->path) + 1);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) { close(fd); return -1; }
  }
  return fd;
}

/* Fails every waiter and forgets the connection. Caller holds C.mu. */
static void drop_locked(conn_status why)
{
  if (C.link) {
    shutdown(C.link->fd, SHUT_RDWR); /* wakes a reader blocked in recv() */
    link_unref_locked(C.link);
    C.link = NULL;
  }
  for (struct waiter *w = C.waiters; w; w = w->next) {
    if (!w->done) { w->done = 1; w->status = why; }
  }
  pthread_cond_broadcast(&C.cv);
}

/* Caller holds C.mu. Connects if there is no connection (logins are replayed lazily by the module). */
static conn_status ensure_connected_locked(void)
{
  if (C.link) return CONN_OK;
  if (!C.configured) return CONN_UNREACHABLE;
  if (C.has_failed && ms_since(&C.last_failure) < RECONNECT_BACKOFF_MS) return CONN_UNREACHABLE;
  int fd = open_socket(&C.addr, C.timeout_ms);
  struct link *l = fd >= 0 ? calloc(1, sizeof *l) : NULL;
  if (!l) {
    int err = errno;
    if (fd >= 0) close(fd);
    if (!C.has_failed) {
      if (C.addr.is_vsock) nacm_log("nitro-acm-p11: cannot reach the enclave at vsock:cid=%u;port=%u: %s", (unsigned)C.addr.cid, (unsigned)C.addr.port, strerror(err));
      else nacm_log("nitro-acm-p11: cannot reach the enclave at unix:path=%s: %s", C.addr.path, strerror(err));
    }
    C.has_failed = 1;
    clock_gettime(CLOCK_MONOTONIC, &C.last_failure);
    return CONN_UNREACHABLE;
  }
  if (C.has_failed) nacm_log("nitro-acm-p11: connected to the enclave again");
  C.has_failed = 0;
  l->fd = fd;
  l->refs = 1; /* the reference held by C.link */
  C.link = l;
  return CONN_OK;
}

uint32_t conn_next_id(void)
{
  pthread_mutex_lock(&C.mu);
  uint32_t id = ++C.next_id;
  pthread_mutex_unlock(&C.mu);
  return id;
}

static void unlink_waiter(struct waiter *w)
{
  for (struct waiter **pp = &C.waiters; *pp; pp = &(*pp)->next) {
    if (*pp == w) { *pp = w->next; return; }
  }
}

static conn_status call_once(kw_buf *request, uint32_t id, uint8_t **reply, size_t *reply_len, int *was_proven);

conn_status conn_call(kw_buf *request, uint32_t id, uint8_t **reply, size_t *reply_len)
{
  if (request->failed) return CONN_PROTOCOL;
  int was_proven = 0;
  conn_status st = call_once(request, id, reply, reply_len, &was_proven);
  /*
   * A connection that worked before and now fails at once means the enclave was
   * restarted since: the first request after that should not fail too. Every
   * request is safe to send twice (sign, decrypt, list, login, ping).
   */
  if (st == CONN_UNREACHABLE && was_proven) {
    pthread_mutex_lock(&C.mu);
    C.has_failed = 0; /* the failure was the old connection's, not a failed connect */
    pthread_mutex_unlock(&C.mu);
    st = call_once(request, id, reply, reply_len, &was_proven);
  }
  return st;
}

static conn_status call_once(kw_buf *request, uint32_t id, uint8_t **reply, size_t *reply_len, int *was_proven)
{
  struct waiter me = { .id = id };
  struct timespec deadline;

  pthread_mutex_lock(&C.mu);
  conn_status st = ensure_connected_locked();
  if (st != CONN_OK) { pthread_mutex_unlock(&C.mu); return st; }
  struct link *l = C.link;
  l->refs++;
  *was_proven = l->proven;
  int timeout_ms = C.timeout_ms;
  me.next = C.waiters;
  C.waiters = &me;
  pthread_mutex_unlock(&C.mu);

  deadline_in(&deadline, timeout_ms);
  pthread_mutex_lock(&C.write_mu);
  int wrc = conn_write_all(l->fd, request->p, request->len, timeout_ms);
  pthread_mutex_unlock(&C.write_mu);

  pthread_mutex_lock(&C.mu);
  if (wrc != 0 && C.link == l) drop_locked(CONN_UNREACHABLE);
  while (!me.done) {
    if (C.link != l) { me.done = 1; me.status = CONN_UNREACHABLE; break; }
    if (!C.reader_active) {
      /* Become the reader until our own reply arrives; hand others theirs. */
      C.reader_active = 1;
      pthread_mutex_unlock(&C.mu);
      uint8_t *msg = NULL;
      size_t len = 0;
      int rc = read_frame(l, &msg, &len, &deadline);
      pthread_mutex_lock(&C.mu);
      C.reader_active = 0;
      pthread_cond_broadcast(&C.cv);
      if (C.link != l) { free(msg); continue; }
      if (rc == -2) {
        if (ms_until(&deadline) == 0) {
          nacm_log("nitro-acm-p11: no reply from the enclave within %d ms; dropping the connection", timeout_ms);
          drop_locked(CONN_TIMEOUT);
        }
        continue;
      }
      if (rc != 0) { drop_locked(CONN_UNREACHABLE); continue; }
      kw_response resp;
      if (kw_parse_response(msg, len, &resp) != 0) {
        nacm_log("nitro-acm-p11: malformed reply from the enclave; dropping the connection");
        free(msg);
        drop_locked(CONN_PROTOCOL);
        continue;
      }
      struct waiter *w;
      for (w = C.waiters; w; w = w->next) if (w->id == resp.id && !w->done) break;
      l->proven = 1;
      if (w) {
        w->done = 1;
        w->status = CONN_OK;
        w->reply = msg;
        w->reply_len = len;
      } else {
        free(msg); /* a late reply to a request that timed out */
      }
      continue;
    }
    if (ms_until(&deadline) == 0) { me.done = 1; me.status = CONN_TIMEOUT; break; }
    struct timespec abs;
    clock_gettime(CLOCK_REALTIME, &abs);
    int left = ms_until(&deadline);
    abs.tv_sec += left / 1000;
    abs.tv_nsec += (long)(left % 1000) * 1000000L;
    if (abs.tv_nsec >= 1000000000L) { abs.tv_sec++; abs.tv_nsec -= 1000000000L; }
    pthread_cond_timedwait(&C.cv, &C.mu, &abs);
  }
  unlink_waiter(&me);
  link_unref_locked(l);
  pthread_mutex_unlock(&C.mu);
  if (me.status == CONN_OK) {
    *reply = me.reply;
    *reply_len = me.reply_len;
  } else {
    free(me.reply);
  }
  return me.status;
}

void conn_close(void)
{
  pthread_mutex_lock(&C.mu);
  drop_locked(CONN_UNREACHABLE);
  C.configured = 0;
  pthread_mutex_unlock(&C.mu);
}

void conn_after_fork_child(void)
{
  /* Only the forking thread exists now; locks may have been held by others. */
  pthread_mutex_init(&C.mu, NULL);
  pthread_mutex_init(&C.write_mu, NULL);
  pthread_cond_init(&C.cv, NULL);
  if (C.link) {
    /* The parent keeps its own copy of the socket and its stream position: close ours, never shut it down. */
    close(C.link->fd);
    free(C.link->rbuf);
    free(C.link); /* other threads' references died with them */
    C.link = NULL;
  }
  C.waiters = NULL;
  C.reader_active = 0;
  C.has_failed = 0;
}

void conn_atfork_prepare(void)
{
  pthread_mutex_lock(&C.mu);
}

void conn_atfork_parent(void)
{
  pthread_mutex_unlock(&C.mu);
}

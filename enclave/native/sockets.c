/*
 * The native part of nitro-acm's Node side, kept to what Node cannot do itself:
 * - create an AF_VSOCK socket and connect or listen; the descriptor is handed to
 *   Node's own stream machinery (src/shared/transport.ts), so framing and
 *   everything above the socket are the same code as over AF_UNIX, where the
 *   tests run (this machine has AF_VSOCK but no vsock loopback);
 * - duplicate a descriptor, so an accepted connection can be handed from the
 *   enclave app's main thread to the key worker thread that will serve it.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>
#include <linux/vm_sockets.h>
#include <node_api.h>

static const char *errno_code(int err)
{
  switch (err) {
  case ECONNREFUSED: return "ECONNREFUSED";
  case ETIMEDOUT: return "ETIMEDOUT";
  case ENODEV: return "ENODEV";
  case ECONNRESET: return "ECONNRESET";
  case EHOSTUNREACH: return "EHOSTUNREACH";
  case EADDRINUSE: return "EADDRINUSE";
  case EAFNOSUPPORT: return "EAFNOSUPPORT";
  default: return "EVSOCK";
  }
}

static napi_value throw_errno(napi_env env, const char *what, int err)
{
  char msg[160];
  snprintf(msg, sizeof msg, "%s: %s", what, strerror(err));
  napi_throw_error(env, errno_code(err), msg);
  return NULL;
}

static int get_u32(napi_env env, napi_value v, uint32_t *out)
{
  return napi_get_value_uint32(env, v, out) == napi_ok;
}

static napi_value make_fd(napi_env env, int fd)
{
  napi_value out;
  napi_create_int32(env, fd, &out);
  return out;
}

/* connect(cid, port, timeoutMs) -> fd (blocking for at most timeoutMs; used rarely: by the agent and the KMS dialer) */
static napi_value js_connect(napi_env env, napi_callback_info info)
{
  size_t argc = 3;
  napi_value argv[3];
  uint32_t cid, port, timeout_ms;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 3 || !get_u32(env, argv[0], &cid) || !get_u32(env, argv[1], &port) || !get_u32(env, argv[2], &timeout_ms)) {
    napi_throw_type_error(env, NULL, "connect(cid, port, timeoutMs): three unsigned integers expected");
    return NULL;
  }
  int fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return throw_errno(env, "vsock socket", errno);
  struct timeval tv = { .tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000 };
  /* Bounds connect() itself; failure to set it only leaves the kernel default (2 s). */
  (void)setsockopt(fd, AF_VSOCK, SO_VM_SOCKETS_CONNECT_TIMEOUT, &tv, sizeof tv);
  struct sockaddr_vm sa;
  memset(&sa, 0, sizeof sa);
  sa.svm_family = AF_VSOCK;
  sa.svm_cid = cid;
  sa.svm_port = port;
  int rc;
  do rc = connect(fd, (struct sockaddr *)&sa, sizeof sa); while (rc < 0 && errno == EINTR);
  if (rc < 0) {
    int err = errno;
    close(fd);
    char what[64];
    snprintf(what, sizeof what, "vsock connect to cid %u port %u", cid, port);
    return throw_errno(env, what, err);
  }
  return make_fd(env, fd);
}

/* listen(cid, port, backlog) -> fd */
static napi_value js_listen(napi_env env, napi_callback_info info)
{
  size_t argc = 3;
  napi_value argv[3];
  uint32_t cid, port, backlog;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 3 || !get_u32(env, argv[0], &cid) || !get_u32(env, argv[1], &port) || !get_u32(env, argv[2], &backlog)) {
    napi_throw_type_error(env, NULL, "listen(cid, port, backlog): three unsigned integers expected");
    return NULL;
  }
  int fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return throw_errno(env, "vsock socket", errno);
  struct sockaddr_vm sa;
  memset(&sa, 0, sizeof sa);
  sa.svm_family = AF_VSOCK;
  sa.svm_cid = cid;
  sa.svm_port = port;
  if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(fd, (int)backlog) < 0) {
    int err = errno;
    close(fd);
    char what[64];
    snprintf(what, sizeof what, "vsock listen on cid %u port %u", cid, port);
    return throw_errno(env, what, err);
  }
  return make_fd(env, fd);
}

/* dup(fd) -> a new close-on-exec descriptor for the same socket */
static napi_value js_dup(napi_env env, napi_callback_info info)
{
  size_t argc = 1;
  napi_value argv[1];
  int32_t fd;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 1 || napi_get_value_int32(env, argv[0], &fd) != napi_ok || fd < 0) {
    napi_throw_type_error(env, NULL, "dup(fd): a descriptor expected");
    return NULL;
  }
  int out = fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (out < 0) return throw_errno(env, "dup", errno);
  return make_fd(env, out);
}

static napi_value init(napi_env env, napi_value exports)
{
  napi_property_descriptor props[] = {
    { "connect", NULL, js_connect, NULL, NULL, NULL, napi_default, NULL },
    { "listen", NULL, js_listen, NULL, NULL, NULL, napi_default, NULL },
    { "dup", NULL, js_dup, NULL, NULL, NULL, napi_default, NULL },
  };
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)

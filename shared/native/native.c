/*
 * The native part of the enclave app (and of the agent's vsock client), kept to
 * what Node cannot do itself:
 * - create an AF_VSOCK socket and connect or listen; the descriptor is handed to
 *   Node's own stream machinery (shared/transport.ts), so framing and
 *   everything above the socket are the same code as over AF_UNIX, where the
 *   tests run (this machine has AF_VSOCK but no vsock loopback);
 * - duplicate a descriptor, so an accepted connection can be handed from the
 *   enclave app's main thread to the key worker thread that will serve it;
 * - say who is on the other end of a connection (the peer's uid over AF_UNIX,
 *   its CID and source port over AF_VSOCK), and connect from a privileged
 *   source port: the provisioning channel's proof that the peer is root
 *   (docs/protocol.md, "Trust model");
 * - talk to the Nitro Security Module: one ioctl on /dev/nsm carrying a CBOR
 *   request and returning a CBOR response (enclave/nsm.ts builds and reads them);
 * - give the C heap's free pages back to the system after a burst of work
 *   (enclave/heap-compaction.ts).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/time.h>
#include <sys/ioctl.h>
#include <sys/uio.h>
#include <unistd.h>
#include <linux/vm_sockets.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#define NAPI_VERSION 8 /* type tags on externals */
#include <node_api.h>
#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

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

/* The three unsigned arguments both vsock calls take: cid, port, and a timeout or backlog. */
static int three_u32(napi_env env, napi_callback_info info, uint32_t out[3], const char *usage)
{
  size_t argc = 3;
  napi_value argv[3];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 3 || !get_u32(env, argv[0], &out[0]) || !get_u32(env, argv[1], &out[1]) || !get_u32(env, argv[2], &out[2])) {
    napi_throw_type_error(env, NULL, usage);
    return 0;
  }
  return 1;
}

/* Throws "<what> cid C port P: <errno text>" and closes fd. */
static napi_value fail_vsock(napi_env env, int fd, const char *what, uint32_t cid, uint32_t port)
{
  int err = errno;
  close(fd);
  char msg[80];
  snprintf(msg, sizeof msg, "%s cid %u port %u", what, cid, port);
  return throw_errno(env, msg, err);
}

static struct sockaddr_vm vsock_address(uint32_t cid, uint32_t port)
{
  struct sockaddr_vm sa;
  memset(&sa, 0, sizeof sa);
  sa.svm_family = AF_VSOCK;
  sa.svm_cid = cid;
  sa.svm_port = port;
  return sa;
}

/*
 * Binds the lowest free source port in 512..1023, scanning down from 1023 as
 * bindresvport(3) does for IP. Binding one needs CAP_NET_BIND_SERVICE, which only
 * root has on the parent: the provisioning channel accepts nothing else.
 */
static int bind_privileged_port(int fd)
{
  for (uint32_t port = 1023; port >= 512; port--) {
    struct sockaddr_vm sa = vsock_address(VMADDR_CID_ANY, port);
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0) return 0;
    if (errno != EADDRINUSE) return -1;
  }
  errno = EADDRINUSE;
  return -1;
}

/*
 * connect(cid, port, timeoutMs[, privilegedSource]) -> fd (blocking for at most
 * timeoutMs; used rarely: by the agent and the KMS dialer)
 */
static napi_value js_connect(napi_env env, napi_callback_info info)
{
  size_t argc = 4;
  napi_value argv[4];
  uint32_t a[3];
  bool privileged = false;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 3 || !get_u32(env, argv[0], &a[0]) || !get_u32(env, argv[1], &a[1]) || !get_u32(env, argv[2], &a[2]) ||
      (argc > 3 && napi_get_value_bool(env, argv[3], &privileged) != napi_ok)) {
    napi_throw_type_error(env, NULL, "connect(cid, port, timeoutMs[, privilegedSource]): three unsigned integers and a boolean expected");
    return NULL;
  }
  int fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return throw_errno(env, "vsock socket", errno);
  if (privileged && bind_privileged_port(fd) < 0) return fail_vsock(env, fd, "vsock bind of a privileged source port (needs root) to reach", a[0], a[1]);
  struct timeval tv = { .tv_sec = a[2] / 1000, .tv_usec = (a[2] % 1000) * 1000 };
  /* Bounds connect() itself; failure to set it only leaves the kernel default (2 s). */
  (void)setsockopt(fd, AF_VSOCK, SO_VM_SOCKETS_CONNECT_TIMEOUT, &tv, sizeof tv);
  struct sockaddr_vm sa = vsock_address(a[0], a[1]);
  int rc;
  do rc = connect(fd, (struct sockaddr *)&sa, sizeof sa); while (rc < 0 && errno == EINTR);
  if (rc < 0) return fail_vsock(env, fd, "vsock connect to", a[0], a[1]);
  return make_fd(env, fd);
}

static void set_u32(napi_env env, napi_value obj, const char *name, uint32_t v)
{
  napi_value x;
  napi_create_uint32(env, v, &x);
  napi_set_named_property(env, obj, name, x);
}

/* peer(fd) -> { family: 'unix', uid, gid, pid } or { family: 'vsock', cid, port } */
static napi_value js_peer(napi_env env, napi_callback_info info)
{
  size_t argc = 1;
  napi_value argv[1], out, family;
  int32_t fd;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 1 || napi_get_value_int32(env, argv[0], &fd) != napi_ok || fd < 0) {
    napi_throw_type_error(env, NULL, "peer(fd): a descriptor expected");
    return NULL;
  }
  struct sockaddr_storage ss;
  socklen_t len = sizeof ss;
  memset(&ss, 0, sizeof ss);
  if (getpeername(fd, (struct sockaddr *)&ss, &len) < 0) return throw_errno(env, "getpeername", errno);
  napi_create_object(env, &out);
  if (ss.ss_family == AF_UNIX) {
    struct ucred cred;
    socklen_t clen = sizeof cred;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &clen) < 0) return throw_errno(env, "SO_PEERCRED", errno);
    napi_create_string_utf8(env, "unix", NAPI_AUTO_LENGTH, &family);
    napi_set_named_property(env, out, "family", family);
    set_u32(env, out, "uid", cred.uid);
    set_u32(env, out, "gid", cred.gid);
    set_u32(env, out, "pid", (uint32_t)cred.pid);
  } else if (ss.ss_family == AF_VSOCK && len >= sizeof(struct sockaddr_vm)) {
    const struct sockaddr_vm *vm = (const struct sockaddr_vm *)&ss;
    napi_create_string_utf8(env, "vsock", NAPI_AUTO_LENGTH, &family);
    napi_set_named_property(env, out, "family", family);
    set_u32(env, out, "cid", vm->svm_cid);
    set_u32(env, out, "port", vm->svm_port);
  } else {
    napi_throw_error(env, "EAFNOSUPPORT", "peer: not a unix or vsock connection");
    return NULL;
  }
  return out;
}

/* listen(cid, port, backlog) -> fd */
static napi_value js_listen(napi_env env, napi_callback_info info)
{
  uint32_t a[3];
  if (!three_u32(env, info, a, "listen(cid, port, backlog): three unsigned integers expected")) return NULL;
  int fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return throw_errno(env, "vsock socket", errno);
  struct sockaddr_vm sa = vsock_address(a[0], a[1]);
  if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(fd, (int)a[2]) < 0) return fail_vsock(env, fd, "vsock listen on", a[0], a[1]);
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

/*
 * Free pages inside the C heap's arenas go back to the system: after the
 * garbage of a provisioning burst is collected, its buffers are free but their
 * pages stay resident, scattered between live ones. Returns whether any went.
 */
static napi_value js_malloc_trim(napi_env env, napi_callback_info info)
{
  (void)info;
  napi_value out;
#ifdef __GLIBC__
  napi_get_boolean(env, malloc_trim(0) == 1, &out);
#else
  napi_get_boolean(env, false, &out);
#endif
  return out;
}

/* The NSM driver's raw request: two iovecs, in and out (linux/nsm.h). */
struct nsm_raw {
  struct iovec request;
  struct iovec response;
};
#define NSM_IOCTL_RAW 0xC0200A00UL /* _IOWR(0x0A, 0, struct nsm_raw) */
#define NSM_RESPONSE_MAX 0x3000     /* the driver's largest response */
#define NSM_REQUEST_MAX 0x1000

/* nsmRequest(fd, request) -> response bytes (blocking; a request takes well under a millisecond) */
static napi_value js_nsm_request(napi_env env, napi_callback_info info)
{
  size_t argc = 2;
  napi_value argv[2];
  int32_t fd;
  void *req;
  size_t req_len;
  bool is_buffer = false;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 2 || napi_get_value_int32(env, argv[0], &fd) != napi_ok || napi_is_buffer(env, argv[1], &is_buffer) != napi_ok || !is_buffer ||
      napi_get_buffer_info(env, argv[1], &req, &req_len) != napi_ok) {
    napi_throw_type_error(env, NULL, "nsmRequest(fd, request): a descriptor and a Buffer expected");
    return NULL;
  }
  if (req_len == 0 || req_len > NSM_REQUEST_MAX) {
    napi_throw_range_error(env, NULL, "NSM request must be 1..4096 bytes");
    return NULL;
  }
  void *resp;
  napi_value out;
  if (napi_create_buffer(env, NSM_RESPONSE_MAX, &resp, &out) != napi_ok) return NULL;
  struct nsm_raw raw = { { req, req_len }, { resp, NSM_RESPONSE_MAX } };
  int rc;
  do rc = ioctl(fd, NSM_IOCTL_RAW, &raw); while (rc < 0 && errno == EINTR);
  if (rc < 0) return throw_errno(env, "NSM ioctl", errno);
  if (raw.response.iov_len > NSM_RESPONSE_MAX) {
    napi_throw_range_error(env, NULL, "NSM response longer than the driver allows");
    return NULL;
  }
  napi_value sliced, len_v, zero, fn, global, args[2];
  /* Return out.subarray(0, len) */
  napi_get_global(env, &global);
  napi_create_uint32(env, 0, &zero);
  napi_create_uint32(env, (uint32_t)raw.response.iov_len, &len_v);
  napi_get_named_property(env, out, "subarray", &fn);
  args[0] = zero;
  args[1] = len_v;
  if (napi_call_function(env, out, fn, 2, args, &sliced) != napi_ok) return NULL;
  (void)global;
  return sliced;
}

/*
 * ECDSA over a digest the caller already computed (PKCS#11 CKM_ECDSA), which
 * node:crypto cannot do (its sign() always hashes). OpenSSL is Node's own: an
 * addon resolves these symbols from the node binary, which exports them.
 * ecdsaKey(pkcs8Der) parses the key once (parsing costs ten times the signature)
 * into a handle, with its signing context, that frees both when collected; ecdsaSignDigest(handle, digest)
 * gives r||s, each as long as the curve's order.
 */
/* Key handles are externals tagged with their kind, so one of another kind is refused, never misread. */
static const napi_type_tag EC_KEY_TAG = { 0x6e6974726f61636dULL, 0x0000000065636b31ULL };
static const napi_type_tag RSA_KEY_TAG = { 0x6e6974726f61636dULL, 0x0000000072736b31ULL };

static int tagged_external(napi_env env, napi_value v, const napi_type_tag *tag, void **out)
{
  napi_valuetype type = napi_undefined;
  bool is = false;
  return napi_typeof(env, v, &type) == napi_ok && type == napi_external && napi_check_object_type_tag(env, v, tag, &is) == napi_ok && is
         && napi_get_value_external(env, v, out) == napi_ok;
}

/*
 * The first argument of a key-handle constructor: a PKCS#8 DER private key of
 * 1..max_len bytes and of this type, parsed; NULL (with the error thrown) otherwise.
 */
static EVP_PKEY *private_key_arg(napi_env env, napi_callback_info info, size_t max_len, int base_id, const char *usage, const char *code, const char *not_it)
{
  size_t argc = 1;
  napi_value argv[1];
  void *der = NULL;
  size_t der_len = 0;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 1 || napi_get_buffer_info(env, argv[0], &der, &der_len) != napi_ok || der_len == 0 || der_len > max_len) {
    napi_throw_type_error(env, NULL, usage);
    return NULL;
  }
  const unsigned char *p = der;
  /* The type named: d2i_AutoPrivateKey tries every decoder OpenSSL has first (390 us
     for an RSA-2048 key here against 130 us), and each new key is parsed once per worker. */
  EVP_PKEY *pkey = d2i_PrivateKey_ex(base_id, NULL, &p, (long)der_len, NULL, NULL);
  if (!pkey || EVP_PKEY_get_base_id(pkey) != base_id) {
    EVP_PKEY_free(pkey);
    ERR_clear_error();
    napi_throw_error(env, code, not_it);
    return NULL;
  }
  return pkey;
}

/* An EC key and its signing context, set up once: making a context looks its algorithm up by name each time. */
struct ec_key { EVP_PKEY *pkey; EVP_PKEY_CTX *ctx; };

static void free_ec_key(napi_env env, void *data, void *hint)
{
  (void)env; (void)hint;
  struct ec_key *k = data;
  EVP_PKEY_CTX_free(k->ctx);
  EVP_PKEY_free(k->pkey);
  free(k);
}

static napi_value js_ecdsa_key(napi_env env, napi_callback_info info)
{
  napi_value out;
  EVP_PKEY *pkey = private_key_arg(env, info, 4096, EVP_PKEY_EC, "ecdsaKey(pkcs8Der): a key of 1..4096 bytes expected", "ECDSA", "not an EC private key");
  if (!pkey) return NULL;
  struct ec_key *k = calloc(1, sizeof *k);
  if (!k) { EVP_PKEY_free(pkey); napi_throw_error(env, "ECDSA", "out of memory"); return NULL; }
  k->pkey = pkey;
  k->ctx = EVP_PKEY_CTX_new(pkey, NULL);
  if (!k->ctx || EVP_PKEY_sign_init(k->ctx) <= 0) {
    free_ec_key(env, k, NULL);
    napi_throw_error(env, "ECDSA", "cannot sign with this key");
    return NULL;
  }
  if (napi_create_external(env, k, free_ec_key, NULL, &out) != napi_ok) { free_ec_key(env, k, NULL); return NULL; }
  if (napi_type_tag_object(env, out, &EC_KEY_TAG) != napi_ok) return NULL;
  return out;
}

static napi_value js_ecdsa_sign_digest(napi_env env, napi_callback_info info)
{
  size_t argc = 2;
  napi_value argv[2];
  void *pkey_p = NULL, *dg = NULL;
  size_t dg_len = 0;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 2 || !tagged_external(env, argv[0], &EC_KEY_TAG, &pkey_p)
      || napi_get_buffer_info(env, argv[1], &dg, &dg_len) != napi_ok || dg_len == 0 || dg_len > 64) {
    napi_throw_type_error(env, NULL, "ecdsaSignDigest(key, digest): a key from ecdsaKey() and a digest of 1..64 bytes expected");
    return NULL;
  }
  struct ec_key *k = pkey_p;
  EVP_PKEY_CTX *ctx = k->ctx;
  napi_value result = NULL;
  unsigned char *sig = NULL;
  ECDSA_SIG *parsed = NULL;
  const char *why = NULL;
  size_t field = (size_t)(EVP_PKEY_get_bits(k->pkey) + 7) / 8;
  size_t sig_len = 0;
  if (EVP_PKEY_sign(ctx, NULL, &sig_len, dg, dg_len) <= 0) { why = "cannot sign with this key"; goto out; }
  sig = OPENSSL_malloc(sig_len);
  if (!sig || EVP_PKEY_sign(ctx, sig, &sig_len, dg, dg_len) <= 0) { why = "signing failed"; goto out; }
  const unsigned char *q = sig;
  parsed = d2i_ECDSA_SIG(NULL, &q, (long)sig_len);
  if (!parsed) { why = "signing gave no signature"; goto out; }
  void *raw = NULL;
  if (napi_create_buffer(env, 2 * field, &raw, &result) != napi_ok) { result = NULL; goto out; }
  if (BN_bn2binpad(ECDSA_SIG_get0_r(parsed), raw, (int)field) < 0 || BN_bn2binpad(ECDSA_SIG_get0_s(parsed), (unsigned char *)raw + field, (int)field) < 0) { why = "signature does not fit the curve"; result = NULL; }
out:
  if (why) napi_throw_error(env, "ECDSA", why);
  if (why) ERR_clear_error();
  ECDSA_SIG_free(parsed);
  OPENSSL_free(sig);
  return result;
}

/*
 * RSA signatures in one call, over what PKCS#11 hands the module: a DigestInfo
 * for PKCS#1 v1.5 (padded as is), a digest for PSS (encoded by OpenSSL), k bytes
 * for raw. In JavaScript this took PSS encoding in several calls into Node and
 * then an RSA_NO_PADDING private encryption that made a key context, and looked
 * its algorithm up, every time. rsaKey(pkcs8Der) parses the key once; its handle
 * keeps a few key contexts, each set up once for one padding (PKCS#1, raw, or PSS
 * with its hash, MGF1 hash and salt length): a TLS server asks for one or two.
 * A handle is used by one thread only (each key worker parses its own).
 */
#define RSA_CTXS 6

struct rsa_ctx { int padding; const EVP_MD *md, *mgf; int salt; EVP_PKEY_CTX *ctx; };
struct rsa_key { EVP_PKEY *pkey; struct rsa_ctx ctxs[RSA_CTXS]; int next; };

static void free_rsa_key(napi_env env, void *data, void *hint)
{
  (void)env; (void)hint;
  struct rsa_key *k = data;
  for (int i = 0; i < RSA_CTXS; i++) EVP_PKEY_CTX_free(k->ctxs[i].ctx);
  EVP_PKEY_free(k->pkey);
  free(k);
}

static napi_value js_rsa_key(napi_env env, napi_callback_info info)
{
  napi_value out;
  EVP_PKEY *pkey = private_key_arg(env, info, 8192, EVP_PKEY_RSA, "rsaKey(pkcs8Der): a key of 1..8192 bytes expected", "RSA", "not an RSA private key");
  if (!pkey) return NULL;
  struct rsa_key *k = calloc(1, sizeof *k);
  if (!k) { EVP_PKEY_free(pkey); napi_throw_error(env, "RSA", "out of memory"); return NULL; }
  k->pkey = pkey;
  if (napi_create_external(env, k, free_rsa_key, NULL, &out) != napi_ok) { free_rsa_key(env, k, NULL); return NULL; }
  if (napi_type_tag_object(env, out, &RSA_KEY_TAG) != napi_ok) return NULL;
  return out;
}

/* The key's context for this padding, made and set up the first time it is asked for. */
static EVP_PKEY_CTX *rsa_ctx_for(struct rsa_key *k, int padding, const EVP_MD *md, const EVP_MD *mgf, int salt)
{
  for (int i = 0; i < RSA_CTXS; i++) {
    struct rsa_ctx *c = &k->ctxs[i];
    if (c->ctx && c->padding == padding && c->md == md && c->mgf == mgf && c->salt == salt) return c->ctx;
  }
  EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new(k->pkey, NULL);
  int ok = ctx && EVP_PKEY_sign_init(ctx) > 0 && EVP_PKEY_CTX_set_rsa_padding(ctx, padding) > 0;
  if (ok && padding == RSA_PKCS1_PSS_PADDING)
    ok = EVP_PKEY_CTX_set_signature_md(ctx, md) > 0 && EVP_PKEY_CTX_set_rsa_mgf1_md(ctx, mgf) > 0 && EVP_PKEY_CTX_set_rsa_pss_saltlen(ctx, salt) > 0;
  if (!ok) { EVP_PKEY_CTX_free(ctx); return NULL; }
  struct rsa_ctx *c = &k->ctxs[k->next];
  k->next = (k->next + 1) % RSA_CTXS;
  EVP_PKEY_CTX_free(c->ctx);
  *c = (struct rsa_ctx){ padding, md, mgf, salt, ctx };
  return ctx;
}

static const EVP_MD *md_named(napi_env env, napi_value v)
{
  char name[16];
  size_t n = 0;
  if (napi_get_value_string_utf8(env, v, name, sizeof name, &n) != napi_ok || n == 0 || n >= sizeof name - 1) return NULL;
  return EVP_get_digestbyname(name);
}

/* rsaSignDigest(key, scheme, input, hash?, mgfHash?, saltLength?): scheme "pkcs1", "pss" or "raw"; the signature, k bytes. */
static napi_value js_rsa_sign_digest(napi_env env, napi_callback_info info)
{
  size_t argc = 6;
  napi_value argv[6];
  void *key_p = NULL, *in = NULL;
  size_t in_len = 0;
  char scheme[8];
  size_t scheme_len = 0;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc < 3 || !tagged_external(env, argv[0], &RSA_KEY_TAG, &key_p)
      || napi_get_value_string_utf8(env, argv[1], scheme, sizeof scheme, &scheme_len) != napi_ok
      || napi_get_buffer_info(env, argv[2], &in, &in_len) != napi_ok || in_len == 0) {
    napi_throw_type_error(env, NULL, "rsaSignDigest(key, scheme, input, ...): a key from rsaKey(), a scheme and a non-empty input expected");
    return NULL;
  }
  struct rsa_key *k = key_p;
  size_t mod = (size_t)EVP_PKEY_get_size(k->pkey);
  int padding;
  const EVP_MD *md = NULL, *mgf = NULL;
  int32_t salt = 0;
  if (strcmp(scheme, "pkcs1") == 0) {
    padding = RSA_PKCS1_PADDING;
    if (in_len > mod - 11) { napi_throw_range_error(env, "RSA", "PKCS#1 v1.5 input longer than the key allows"); return NULL; }
  } else if (strcmp(scheme, "raw") == 0) {
    padding = RSA_NO_PADDING;
    if (in_len != mod) { napi_throw_range_error(env, "RSA", "raw RSA input must be as long as the modulus"); return NULL; }
  } else if (strcmp(scheme, "pss") == 0 && argc >= 6) {
    padding = RSA_PKCS1_PSS_PADDING;
    md = md_named(env, argv[3]);
    mgf = md_named(env, argv[4]);
    if (!md || !mgf || napi_get_value_int32(env, argv[5], &salt) != napi_ok || salt < 0 || (size_t)EVP_MD_get_size(md) != in_len) {
      napi_throw_range_error(env, "RSA", "PSS needs a known hash, MGF1 hash, a salt length and a digest of the hash's size");
      return NULL;
    }
  } else {
    napi_throw_type_error(env, NULL, "rsaSignDigest: scheme is pkcs1, pss (with hash, mgfHash, saltLength) or raw");
    return NULL;
  }
  EVP_PKEY_CTX *ctx = rsa_ctx_for(k, padding, md, mgf, (int)salt);
  napi_value result = NULL;
  void *sig = NULL;
  size_t sig_len = mod;
  if (!ctx) { napi_throw_error(env, "RSA", "this key cannot sign with these parameters (a salt too long for the key?)"); return NULL; }
  if (napi_create_buffer(env, mod, &sig, &result) != napi_ok) return NULL;
  if (EVP_PKEY_sign(ctx, sig, &sig_len, in, in_len) <= 0 || sig_len != mod) {
    ERR_clear_error();
    napi_throw_error(env, "RSA", padding == RSA_NO_PADDING ? "raw RSA input is not below the modulus" : "signing failed");
    return NULL;
  }
  return result;
}

static napi_value init(napi_env env, napi_value exports)
{
  napi_property_descriptor props[] = {
    { "connect", NULL, js_connect, NULL, NULL, NULL, napi_default, NULL },
    { "listen", NULL, js_listen, NULL, NULL, NULL, napi_default, NULL },
    { "dup", NULL, js_dup, NULL, NULL, NULL, napi_default, NULL },
    { "mallocTrim", NULL, js_malloc_trim, NULL, NULL, NULL, napi_default, NULL },
    { "peer", NULL, js_peer, NULL, NULL, NULL, napi_default, NULL },
    { "nsmRequest", NULL, js_nsm_request, NULL, NULL, NULL, napi_default, NULL },
    { "ecdsaKey", NULL, js_ecdsa_key, NULL, NULL, NULL, napi_default, NULL },
    { "ecdsaSignDigest", NULL, js_ecdsa_sign_digest, NULL, NULL, NULL, napi_default, NULL },
    { "rsaKey", NULL, js_rsa_key, NULL, NULL, NULL, napi_default, NULL },
    { "rsaSignDigest", NULL, js_rsa_sign_digest, NULL, NULL, NULL, napi_default, NULL },
  };
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)

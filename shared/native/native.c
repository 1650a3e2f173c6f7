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

/* r||s into out (2 * the curve's field size, at most 2 * 66 bytes); NULL, or why it failed. */
static const char *ecdsa_sign_rs(struct ec_key *k, const void *dg, size_t dg_len, unsigned char *out, size_t out_cap, size_t *out_len)
{
  const char *why = NULL;
  unsigned char *sig = NULL;
  ECDSA_SIG *parsed = NULL;
  size_t field = (size_t)(EVP_PKEY_get_bits(k->pkey) + 7) / 8;
  size_t sig_len = 0;
  if (2 * field > out_cap) return "curve too large";
  if (EVP_PKEY_sign(k->ctx, NULL, &sig_len, dg, dg_len) <= 0) { why = "cannot sign with this key"; goto out; }
  sig = OPENSSL_malloc(sig_len);
  if (!sig || EVP_PKEY_sign(k->ctx, sig, &sig_len, dg, dg_len) <= 0) { why = "signing failed"; goto out; }
  const unsigned char *q = sig;
  parsed = d2i_ECDSA_SIG(NULL, &q, (long)sig_len);
  if (!parsed) { why = "signing gave no signature"; goto out; }
  if (BN_bn2binpad(ECDSA_SIG_get0_r(parsed), out, (int)field) < 0 || BN_bn2binpad(ECDSA_SIG_get0_s(parsed), out + field, (int)field) < 0) { why = "signature does not fit the curve"; goto out; }
  *out_len = 2 * field;
out:
  if (why) ERR_clear_error();
  ECDSA_SIG_free(parsed);
  OPENSSL_free(sig);
  return why;
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
  unsigned char rs[2 * 66];
  size_t rs_len = 0;
  const char *why = ecdsa_sign_rs(pkey_p, dg, dg_len, rs, sizeof rs, &rs_len);
  if (why) { napi_throw_error(env, "ECDSA", why); return NULL; }
  napi_value result;
  if (napi_create_buffer_copy(env, rs_len, rs, NULL, &result) != napi_ok) return NULL;
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

/* The signature, as long as the modulus, into sig (which has room for it); NULL, or why it failed. */
static const char *rsa_sign_into(struct rsa_key *k, int padding, const EVP_MD *md, const EVP_MD *mgf, int salt, const void *in, size_t in_len, void *sig)
{
  size_t mod = (size_t)EVP_PKEY_get_size(k->pkey), sig_len = mod;
  EVP_PKEY_CTX *ctx = rsa_ctx_for(k, padding, md, mgf, salt);
  if (!ctx) { ERR_clear_error(); return "this key cannot sign with these parameters (a salt too long for the key?)"; }
  if (EVP_PKEY_sign(ctx, sig, &sig_len, in, in_len) <= 0 || sig_len != mod) {
    ERR_clear_error();
    return padding == RSA_NO_PADDING ? "raw RSA input is not below the modulus" : "signing failed";
  }
  return NULL;
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
  napi_value result = NULL;
  void *sig = NULL;
  if (napi_create_buffer(env, mod, &sig, &result) != napi_ok) return NULL;
  const char *why = rsa_sign_into(k, padding, md, mgf, (int)salt, in, in_len, sig);
  if (why) { napi_throw_error(env, "RSA", why); return NULL; }
  return result;
}

/*
 * The key channel's connections, served on a key worker's own thread and event
 * loop (enclave/key-worker.ts; docs/protocol.md is the format). This code reads
 * and frames requests, writes replies, and bounds what a connection may make the
 * enclave hold. It answers one request itself: a SIGN with a key the worker has
 * registered here, on a connection logged in to that key's token, whose
 * parameters are valid and whose signature succeeds. Every other frame, including
 * any SIGN that fails one of those checks, goes to JavaScript
 * (enclave/key-connection.ts), which answers it or reports its error as before.
 * Why: measured per TLS handshake, the worker's JavaScript and its stream
 * machinery cost more than the socket itself (docs/BENCHMARKS.md); a signature
 * now crosses no JavaScript between the socket and EVP_PKEY_sign.
 *
 * Everything here runs on the worker's thread: no locks. JavaScript's calls in
 * (kcSend, kcEnd, kcLogin, kcAddKey, ...) and this code's calls out (a frame, a
 * closed connection) are made on that thread.
 */
#include <uv.h>
#include <time.h>

/* enclave and module agree on these (shared/key-wire.ts, p11-module/src/wire.h; test/wire-constants.test.ts checks them) */
#define KC_VERSION 1
#define KC_OP_SIGN 4
#define KC_REPLY_BIT 0x80
#define KC_REQUEST_HEADER 8
#define KC_RESPONSE_HEADER 16
#define KC_MAX_REQUEST (16 * 1024)
#define KC_SCHEME_PKCS1 1
#define KC_SCHEME_PSS 2
#define KC_SCHEME_RAW 3
#define KC_SCHEME_ECDSA 4
/* One more than LATENCY_BUCKETS_SECONDS in shared/operation-stats.ts (kcInit passes the bounds). */
#define KC_LATENCY_BUCKETS 16
#define KC_KEY_BUCKETS 4096
/* Connection ids: a slot (low 16 bits) and that slot's reuse count, so a late reply to a closed connection never reaches the next one in its slot. */
#define KC_MAX_SLOTS 65536
#define KC_READ_CHUNK 4096

struct kc_key {
  struct kc_key *next;
  uint32_t key_id, token_id;
  int is_ec;
  void *handle; /* struct rsa_key or struct ec_key, kept alive by ref */
  napi_ref ref;
  /* Signatures made here since JavaScript last took them (kcTakeStats). */
  uint64_t signs;
  double seconds;
  uint64_t buckets[KC_LATENCY_BUCKETS];
};

struct kc_state;

struct kc_conn {
  uv_poll_t poll;
  struct kc_state *st;
  int fd;
  uint32_t id;
  unsigned char *in;
  size_t in_len, in_cap;
  unsigned char *out;
  size_t out_off, out_len, out_cap;
  uint32_t *tokens; /* token ids logged in, sorted */
  size_t n_tokens, tokens_cap;
  uint64_t last_active;
  int held;      /* a request JavaScript is still answering holds the queue (a throttled login) */
  int eof;       /* the peer will send no more */
  int ending;    /* close once the replies are written */
  int closing;
  int polled; /* the events the poll handle watches now */
  const char *close_reason;
};

struct kc_state {
  napi_env env;
  uv_loop_t *loop;
  napi_ref on_frame, on_close;
  napi_async_context actx;
  struct kc_conn **slots;
  uint16_t *reuse;
  uint32_t n_slots, slots_cap;
  struct kc_key *keys[KC_KEY_BUCKETS];
  uint32_t generation;
  size_t max_unsent_conn, max_unsent_total, unsent_total;
  uint64_t clock;
  double bounds[KC_LATENCY_BUCKETS - 1];
  uint32_t n_bounds;
  /* The thread is ending: its connections close without telling JavaScript, and the state goes with the last one. */
  napi_async_cleanup_hook_handle teardown;
  uint32_t live;
  int ending_thread, finalized;
};

static uint32_t be32(const unsigned char *p) { return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3]; }
static void put_be32(unsigned char *p, uint32_t v) { p[0] = v >> 24; p[1] = v >> 16; p[2] = v >> 8; p[3] = (unsigned char)v; }

static struct kc_state *kc_state(napi_env env)
{
  void *d = NULL;
  if (napi_get_instance_data(env, &d) != napi_ok || !d) {
    napi_throw_error(env, NULL, "key channel: kcInit() first");
    return NULL;
  }
  return d;
}

static struct kc_conn *kc_conn_of(struct kc_state *st, uint32_t id)
{
  uint32_t slot = id & 0xffff;
  if (slot >= st->n_slots || !st->slots[slot] || st->slots[slot]->id != id) return NULL;
  return st->slots[slot];
}

static struct kc_key *kc_key_find(struct kc_state *st, uint32_t key_id)
{
  for (struct kc_key *k = st->keys[key_id % KC_KEY_BUCKETS]; k; k = k->next) if (k->key_id == key_id) return k;
  return NULL;
}

static size_t kc_unsent(const struct kc_conn *c) { return c->out_len - c->out_off; }

static void kc_on_closed(uv_handle_t *h);

static void kc_close(struct kc_conn *c, const char *reason)
{
  if (c->closing) return;
  c->closing = 1;
  c->close_reason = reason;
  c->st->unsent_total -= kc_unsent(c);
  c->out_off = c->out_len = 0;
  uv_poll_stop(&c->poll);
  uv_close((uv_handle_t *)&c->poll, kc_on_closed);
}

/* Calls fn(args) as a callback from the event loop (microtasks run after it); an exception goes to the worker's error handling. */
static void kc_call(struct kc_state *st, napi_ref fn_ref, size_t argc, napi_value *argv, napi_value *result)
{
  napi_env env = st->env;
  napi_value fn, recv, res;
  napi_get_reference_value(env, fn_ref, &fn);
  napi_get_global(env, &recv); /* napi_make_callback wants an object as `this` */
  if (napi_make_callback(env, st->actx, recv, fn, argc, argv, &res) != napi_ok) {
    bool pending = false;
    napi_is_exception_pending(env, &pending);
    if (pending) {
      napi_value err;
      napi_get_and_clear_last_exception(env, &err);
      napi_fatal_exception(env, err);
    }
    res = NULL;
  }
  if (result) *result = res;
}

static void kc_free_state_now(struct kc_state *st)
{
  free(st->slots);
  free(st->reuse);
  free(st);
}

static void kc_on_closed(uv_handle_t *h)
{
  struct kc_conn *c = h->data;
  struct kc_state *st = c->st;
  close(c->fd);
  uint32_t slot = c->id & 0xffff;
  st->slots[slot] = NULL;
  st->live--;
  if (st->ending_thread) {
    free(c->in);
    free(c->out);
    free(c->tokens);
    free(c);
    if (st->live == 0) {
      napi_remove_async_cleanup_hook(st->teardown);
      if (st->finalized) kc_free_state_now(st);
    }
    return;
  }
  napi_handle_scope scope;
  napi_open_handle_scope(st->env, &scope);
  napi_value argv[2];
  napi_create_uint32(st->env, c->id, &argv[0]);
  if (c->close_reason) napi_create_string_utf8(st->env, c->close_reason, NAPI_AUTO_LENGTH, &argv[1]);
  else napi_get_undefined(st->env, &argv[1]);
  free(c->in);
  free(c->out);
  free(c->tokens);
  free(c);
  kc_call(st, st->on_close, 2, argv, NULL);
  napi_close_handle_scope(st->env, scope);
}

/* Appends to the connection's unsent replies; 0 when out of memory (the connection is closed). */
static int kc_queue(struct kc_conn *c, const void *a, size_t a_len, const void *b, size_t b_len)
{
  if (a_len + b_len == 0) return 1;
  size_t need = c->out_len + a_len + b_len;
  if (need > c->out_cap) {
    if (c->out_off > 0) { /* drop what is written first */
      memmove(c->out, c->out + c->out_off, c->out_len - c->out_off);
      c->out_len -= c->out_off;
      c->out_off = 0;
      need = c->out_len + a_len + b_len;
    }
    if (need > c->out_cap) {
      size_t cap = c->out_cap ? c->out_cap : 1024;
      while (cap < need) cap *= 2;
      unsigned char *p = realloc(c->out, cap);
      if (!p) { kc_close(c, "out of memory for a reply"); return 0; }
      c->out = p;
      c->out_cap = cap;
    }
  }
  if (a_len) memcpy(c->out + c->out_len, a, a_len);
  if (b_len) memcpy(c->out + c->out_len + a_len, b, b_len);
  c->out_len += a_len + b_len;
  c->st->unsent_total += a_len + b_len;
  return 1;
}

/* Writes what it can without blocking; 0 if the connection failed (closed). */
static int kc_flush(struct kc_conn *c)
{
  while (kc_unsent(c) > 0) {
    ssize_t n = send(c->fd, c->out + c->out_off, kc_unsent(c), MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      kc_close(c, NULL);
      return 0;
    }
    c->out_off += (size_t)n;
    c->st->unsent_total -= (size_t)n;
  }
  if (c->out_off == c->out_len) c->out_off = c->out_len = 0;
  /* A reply buffer grown for one large answer (a token list) is not kept. */
  if (c->out_len == 0 && c->out_cap > 64 * 1024) { free(c->out); c->out = NULL; c->out_cap = 0; }
  return 1;
}

/*
 * Over the worker's total of unsent replies, the connection holding the most is
 * closed (so many clients that send and never read cannot fill the enclave's
 * memory between them); each connection also stops being read at its own cap.
 */
static void kc_enforce_budget(struct kc_state *st)
{
  while (st->unsent_total > st->max_unsent_total) {
    struct kc_conn *worst = NULL;
    for (uint32_t i = 0; i < st->n_slots; i++) {
      struct kc_conn *c = st->slots[i];
      if (c && !c->closing && (!worst || kc_unsent(c) > kc_unsent(worst))) worst = c;
    }
    if (!worst) break;
    kc_close(worst, "replies unread over this worker's total: closing the client holding the most");
  }
}

static void kc_on_poll(uv_poll_t *h, int status, int events);

/* Reads while it may, writes while it has to; closes once ended and written. */
static void kc_update(struct kc_conn *c)
{
  if (c->closing) return;
  if ((c->ending || c->eof) && !c->held && kc_unsent(c) == 0) {
    /* A peer that stopped sending gets the answers to what it sent, then the connection closes. */
    if (c->ending || c->in_len < 4 || c->in_len < 4 + (size_t)be32(c->in)) { kc_close(c, NULL); return; }
  }
  int events = 0;
  if (!c->eof && !c->ending && !c->held && kc_unsent(c) <= c->st->max_unsent_conn) events |= UV_READABLE;
  if (kc_unsent(c) > 0) events |= UV_WRITABLE;
  /* Only on a change: restarting the handle costs an epoll_ctl each request. */
  if (events == c->polled) return;
  c->polled = events;
  if (events) uv_poll_start(&c->poll, events, kc_on_poll);
  else uv_poll_stop(&c->poll);
}

static int kc_logged_in(const struct kc_conn *c, uint32_t token_id)
{
  size_t lo = 0, hi = c->n_tokens;
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    if (c->tokens[mid] == token_id) return 1;
    if (c->tokens[mid] < token_id) lo = mid + 1; else hi = mid;
  }
  return 0;
}

static const EVP_MD *kc_md(int id)
{
  switch (id) {
    case 1: return EVP_sha1();
    case 2: return EVP_sha224();
    case 3: return EVP_sha256();
    case 4: return EVP_sha384();
    case 5: return EVP_sha512();
    default: return NULL;
  }
}

static double kc_now(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/*
 * A SIGN answered here, when everything about it is in order; 0 leaves the frame
 * to JavaScript, which checks it again and answers with the error (so both give
 * the same errors, and JavaScript's are the ones the tests and the module know).
 * SIGN's body: key id u32, scheme u8, hash u8, MGF1 hash u8, padding u8, salt u32, data (u16 length).
 */
static int kc_fast_sign(struct kc_conn *c, const unsigned char *f, size_t len)
{
  if (f[0] != KC_VERSION || f[1] != KC_OP_SIGN || len < KC_REQUEST_HEADER + 14) return 0;
  const unsigned char *b = f + KC_REQUEST_HEADER;
  size_t data_len = (size_t)b[12] << 8 | b[13];
  if (len != KC_REQUEST_HEADER + 14 + data_len) return 0;
  struct kc_state *st = c->st;
  struct kc_key *k = kc_key_find(st, be32(b));
  if (!k || !kc_logged_in(c, k->token_id)) return 0;
  int scheme = b[4];
  uint32_t salt = be32(b + 8);
  const unsigned char *data = b + 14;
  unsigned char reply[KC_RESPONSE_HEADER + 4 + 1024];
  unsigned char *sig = reply + 4 + KC_RESPONSE_HEADER;
  size_t sig_len = 0;
  double t0 = kc_now();
  if (k->is_ec) {
    if (scheme != KC_SCHEME_ECDSA || data_len < 1 || data_len > 64) return 0;
    if (ecdsa_sign_rs(k->handle, data, data_len, sig, 1024, &sig_len)) return 0;
  } else {
    struct rsa_key *rk = k->handle;
    size_t mod = (size_t)EVP_PKEY_get_size(rk->pkey);
    if (mod > 1024) return 0;
    const EVP_MD *md = NULL, *mgf = NULL;
    int padding;
    if (scheme == KC_SCHEME_PKCS1) {
      if (data_len < 1 || data_len > mod - 11) return 0;
      padding = RSA_PKCS1_PADDING;
    } else if (scheme == KC_SCHEME_PSS) {
      md = kc_md(b[5]);
      mgf = kc_md(b[6]);
      /* As enclave/rsa-ops.ts checks it: a digest of the hash's size, and room for it, the salt and two bytes. */
      if (!md || !mgf || data_len != (size_t)EVP_MD_get_size(md) || salt > 1024
          || ((size_t)EVP_PKEY_get_bits(rk->pkey) - 1 + 7) / 8 < data_len + salt + 2) return 0;
      padding = RSA_PKCS1_PSS_PADDING;
    } else if (scheme == KC_SCHEME_RAW) {
      if (data_len != mod) return 0; /* shorter inputs are padded by JavaScript */
      padding = RSA_NO_PADDING;
    } else return 0;
    if (rsa_sign_into(rk, padding, md, mgf, (int)salt, data, data_len, sig)) return 0;
    sig_len = mod;
  }
  double seconds = kc_now() - t0;
  k->signs++;
  k->seconds += seconds;
  uint32_t i = 0;
  while (i < st->n_bounds && seconds > st->bounds[i]) i++;
  k->buckets[i]++;
  /* length, version, op | reply, flags, request id, CKR_OK, generation */
  put_be32(reply, (uint32_t)(KC_RESPONSE_HEADER + sig_len));
  reply[4] = KC_VERSION;
  reply[5] = KC_OP_SIGN | KC_REPLY_BIT;
  reply[6] = reply[7] = 0;
  memcpy(reply + 8, f + 4, 4);
  put_be32(reply + 12, 0);
  put_be32(reply + 16, st->generation);
  kc_queue(c, reply, 4 + KC_RESPONSE_HEADER + sig_len, NULL, 0);
  return 1;
}

/* The complete frames received, in order, while nothing holds the queue and the replies are under the cap. */
static void kc_process(struct kc_conn *c)
{
  struct kc_state *st = c->st;
  size_t off = 0;
  while (!c->closing && !c->held && !c->ending && kc_unsent(c) <= st->max_unsent_conn && c->in_len - off >= 4) {
    uint32_t len = be32(c->in + off);
    if (len > KC_MAX_REQUEST) { kc_close(c, "dropping a client: a request frame over 16 KiB"); return; }
    if (len < KC_REQUEST_HEADER) { kc_close(c, "dropping a client: a request shorter than its header"); return; }
    if (c->in_len - off - 4 < len) break;
    const unsigned char *frame = c->in + off + 4;
    off += 4 + len;
    if (kc_fast_sign(c, frame, len)) continue;
    napi_handle_scope scope;
    napi_open_handle_scope(st->env, &scope);
    napi_value argv[2], res;
    void *copy;
    napi_create_uint32(st->env, c->id, &argv[0]);
    if (napi_create_buffer_copy(st->env, len, frame, &copy, &argv[1]) != napi_ok) { napi_close_handle_scope(st->env, scope); kc_close(c, "out of memory for a request"); return; }
    kc_call(st, st->on_frame, 2, argv, &res);
    bool holds = false;
    if (res) napi_get_value_bool(st->env, res, &holds);
    napi_close_handle_scope(st->env, scope);
    /* JavaScript may have closed or ended this connection meanwhile; the struct lives until the close callback. */
    if (c->closing) return;
    if (holds) c->held = 1;
  }
  if (off > 0) {
    memmove(c->in, c->in + off, c->in_len - off);
    c->in_len -= off;
  }
  if (!kc_flush(c)) return;
  kc_enforce_budget(st);
  kc_update(c);
}

static void kc_on_poll(uv_poll_t *h, int status, int events)
{
  struct kc_conn *c = h->data;
  if (c->closing) return;
  if (status < 0) { kc_close(c, NULL); return; }
  if (events & UV_WRITABLE) {
    if (!kc_flush(c)) return;
  }
  if (events & UV_READABLE) {
    /* Room for what may come: a whole frame once its length is known. */
    size_t want = c->in_len + KC_READ_CHUNK;
    if (c->in_len >= 4) {
      size_t frame = 4 + (size_t)be32(c->in);
      if (frame <= 4 + KC_MAX_REQUEST && frame > want) want = frame;
    }
    if (want > 4 + KC_MAX_REQUEST + KC_READ_CHUNK) want = 4 + KC_MAX_REQUEST + KC_READ_CHUNK;
    if (want > c->in_cap) {
      unsigned char *p = realloc(c->in, want);
      if (!p) { kc_close(c, "out of memory for a request"); return; }
      c->in = p;
      c->in_cap = want;
    }
    ssize_t n;
    do n = read(c->fd, c->in + c->in_len, c->in_cap - c->in_len); while (n < 0 && errno == EINTR);
    if (n == 0) c->eof = 1;
    else if (n < 0) {
      if (errno != EAGAIN && errno != EWOULDBLOCK) { kc_close(c, NULL); return; }
    } else {
      c->in_len += (size_t)n;
      c->last_active = ++c->st->clock;
    }
  }
  kc_process(c);
  /* An idle connection keeps no large request buffer. */
  if (!c->closing && c->in_len == 0 && c->in_cap > KC_READ_CHUNK) { free(c->in); c->in = NULL; c->in_cap = 0; }
}

/* The worker thread ends (terminate, or its error): every connection is closed before its event loop is. */
static void kc_on_teardown(napi_async_cleanup_hook_handle handle, void *arg)
{
  struct kc_state *st = arg;
  st->ending_thread = 1;
  if (st->live == 0) { napi_remove_async_cleanup_hook(handle); return; }
  for (uint32_t i = 0; i < st->n_slots; i++) {
    struct kc_conn *c = st->slots[i];
    if (c && !c->closing) kc_close(c, NULL);
  }
}

static void kc_free_state(napi_env env, void *data, void *hint)
{
  (void)hint;
  struct kc_state *st = data;
  for (uint32_t i = 0; i < KC_KEY_BUCKETS; i++) {
    for (struct kc_key *k = st->keys[i], *next; k; k = next) { next = k->next; napi_delete_reference(env, k->ref); free(k); }
    st->keys[i] = NULL;
  }
  st->finalized = 1;
  if (st->live == 0) kc_free_state_now(st);
}

/* kcInit(onFrame(connId, frame) -> holds, onClose(connId, reason?), maxUnsentPerConnection, maxUnsentTotal, latencyBounds[]) */
static napi_value js_kc_init(napi_env env, napi_callback_info info)
{
  size_t argc = 5;
  napi_value argv[5];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  napi_valuetype t0 = napi_undefined, t1 = napi_undefined;
  int64_t per_conn = 0, total = 0;
  uint32_t nb = 0;
  bool is_array = false;
  if (argc < 5 || napi_typeof(env, argv[0], &t0) != napi_ok || t0 != napi_function || napi_typeof(env, argv[1], &t1) != napi_ok || t1 != napi_function
      || napi_get_value_int64(env, argv[2], &per_conn) != napi_ok || per_conn < 1 || napi_get_value_int64(env, argv[3], &total) != napi_ok || total < 1
      || napi_is_array(env, argv[4], &is_array) != napi_ok || !is_array || napi_get_array_length(env, argv[4], &nb) != napi_ok || nb > KC_LATENCY_BUCKETS - 1) {
    napi_throw_type_error(env, NULL, "kcInit(onFrame, onClose, maxUnsentPerConnection, maxUnsentTotal, latencyBounds) expected");
    return NULL;
  }
  void *old = NULL;
  if (napi_get_instance_data(env, &old) == napi_ok && old) { napi_throw_error(env, NULL, "key channel: kcInit() once per thread"); return NULL; }
  struct kc_state *st = calloc(1, sizeof *st);
  if (!st) { napi_throw_error(env, NULL, "out of memory"); return NULL; }
  st->env = env;
  st->max_unsent_conn = (size_t)per_conn;
  st->max_unsent_total = (size_t)total;
  st->n_bounds = nb;
  for (uint32_t i = 0; i < nb; i++) {
    napi_value v;
    napi_get_element(env, argv[4], i, &v);
    napi_get_value_double(env, v, &st->bounds[i]);
  }
  napi_value name;
  napi_create_string_utf8(env, "nitro-acm key channel", NAPI_AUTO_LENGTH, &name);
  if (napi_get_uv_event_loop(env, &st->loop) != napi_ok || napi_async_init(env, NULL, name, &st->actx) != napi_ok
      || napi_create_reference(env, argv[0], 1, &st->on_frame) != napi_ok || napi_create_reference(env, argv[1], 1, &st->on_close) != napi_ok
      || napi_add_async_cleanup_hook(env, kc_on_teardown, st, &st->teardown) != napi_ok
      || napi_set_instance_data(env, st, kc_free_state, NULL) != napi_ok) {
    free(st);
    napi_throw_error(env, NULL, "key channel: cannot set up");
    return NULL;
  }
  return NULL;
}

static int kc_uint32_arg(napi_env env, napi_value v, uint32_t *out)
{
  napi_valuetype t = napi_undefined;
  return napi_typeof(env, v, &t) == napi_ok && t == napi_number && napi_get_value_uint32(env, v, out) == napi_ok;
}

/* kcServe(fd) -> connection id: this thread now owns the descriptor. */
static napi_value js_kc_serve(napi_env env, napi_callback_info info)
{
  size_t argc = 1;
  napi_value argv[1], out;
  int32_t fd = -1;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  struct kc_state *st = kc_state(env);
  if (!st) return NULL;
  if (argc < 1 || napi_get_value_int32(env, argv[0], &fd) != napi_ok || fd < 0) { napi_throw_type_error(env, NULL, "kcServe(fd): a descriptor expected"); return NULL; }
  uint32_t slot = 0;
  while (slot < st->n_slots && st->slots[slot]) slot++;
  if (slot == st->n_slots) {
    if (st->n_slots == KC_MAX_SLOTS) { close(fd); napi_throw_range_error(env, NULL, "key channel: too many connections on this thread"); return NULL; }
    if (st->n_slots == st->slots_cap) {
      uint32_t cap = st->slots_cap ? st->slots_cap * 2 : 64;
      struct kc_conn **s = realloc(st->slots, cap * sizeof *s);
      if (s) st->slots = s;
      uint16_t *r = s ? realloc(st->reuse, cap * sizeof *r) : NULL;
      if (!s || !r) { close(fd); napi_throw_error(env, NULL, "out of memory"); return NULL; }
      st->reuse = r;
      st->slots_cap = cap;
    }
    st->slots[slot] = NULL;
    st->reuse[slot] = 0;
    st->n_slots++;
  }
  struct kc_conn *c = calloc(1, sizeof *c);
  int fl = fcntl(fd, F_GETFL);
  if (!c || fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0 || uv_poll_init_socket(st->loop, &c->poll, fd) != 0) {
    free(c);
    close(fd);
    napi_throw_error(env, NULL, "key channel: cannot serve this descriptor");
    return NULL;
  }
  c->poll.data = c;
  c->st = st;
  c->fd = fd;
  c->id = (uint32_t)(++st->reuse[slot]) << 16 | slot;
  c->last_active = ++st->clock;
  st->slots[slot] = c;
  st->live++;
  kc_update(c);
  napi_create_uint32(env, c->id, &out);
  return out;
}

/* kcSend(connId, head, body?): a reply, after those already queued. False when the connection is gone. */
static napi_value js_kc_send(napi_env env, napi_callback_info info)
{
  size_t argc = 3;
  napi_value argv[3], out;
  uint32_t id;
  void *head = NULL, *body = NULL;
  size_t head_len = 0, body_len = 0;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  struct kc_state *st = kc_state(env);
  if (!st) return NULL;
  napi_valuetype bt = napi_undefined;
  if (argc < 2 || !kc_uint32_arg(env, argv[0], &id) || napi_get_buffer_info(env, argv[1], &head, &head_len) != napi_ok
      || (argc >= 3 && napi_typeof(env, argv[2], &bt) == napi_ok && bt != napi_undefined && napi_get_buffer_info(env, argv[2], &body, &body_len) != napi_ok)) {
    napi_throw_type_error(env, NULL, "kcSend(connId, head, body?): a connection and Buffers expected");
    return NULL;
  }
  struct kc_conn *c = kc_conn_of(st, id);
  int ok = c && !c->closing;
  if (ok && kc_unsent(c) == 0) {
    /* Nothing queued before it: written from JavaScript's buffers, and only what the socket does not take is copied (a token list is large). */
    struct iovec iov[2] = { { head, head_len }, { body, body_len } };
    struct msghdr msg = { .msg_iov = iov, .msg_iovlen = body_len ? 2 : 1 };
    ssize_t n;
    do n = sendmsg(c->fd, &msg, MSG_NOSIGNAL); while (n < 0 && errno == EINTR);
    if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) { kc_close(c, NULL); ok = 0; }
    else {
      size_t done = n < 0 ? 0 : (size_t)n;
      size_t head_left = done < head_len ? head_len - done : 0;
      size_t body_done = done > head_len ? done - head_len : 0;
      ok = kc_queue(c, head_left ? (unsigned char *)head + (head_len - head_left) : NULL, head_left,
                    body_len > body_done ? (unsigned char *)body + body_done : NULL, body_len - body_done);
    }
  } else if (ok) ok = kc_queue(c, head, head_len, body, body_len);
  if (ok) {
    /* From inside kc_process the batch is written at its end; a reply sent later (a throttled login) goes now. */
    ok = kc_flush(c);
    if (ok) { kc_enforce_budget(st); kc_update(c); }
  }
  napi_get_boolean(env, ok && !c->closing, &out);
  return out;
}

static struct kc_conn *kc_conn_arg(napi_env env, napi_callback_info info, size_t want, napi_value *argv, const char *usage)
{
  size_t argc = want;
  uint32_t id;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  struct kc_state *st = kc_state(env);
  if (!st) return NULL;
  if (argc < want || !kc_uint32_arg(env, argv[0], &id)) { napi_throw_type_error(env, NULL, usage); return NULL; }
  return kc_conn_of(st, id); /* NULL: gone, which is not an error */
}

/* kcResume(connId): the held request is answered; take the next ones. */
static napi_value js_kc_resume(napi_env env, napi_callback_info info)
{
  napi_value argv[1];
  struct kc_conn *c = kc_conn_arg(env, info, 1, argv, "kcResume(connId) expected");
  if (c && !c->closing) { c->held = 0; kc_process(c); }
  return NULL;
}

/* kcEnd(connId): close once the replies queued are written (a client speaking another version). */
static napi_value js_kc_end(napi_env env, napi_callback_info info)
{
  napi_value argv[1];
  struct kc_conn *c = kc_conn_arg(env, info, 1, argv, "kcEnd(connId) expected");
  if (c && !c->closing) { c->ending = 1; kc_update(c); }
  return NULL;
}

/* kcCloseIdlest() -> whether there was one: the connection that has sent nothing for longest. */
static napi_value js_kc_close_idlest(napi_env env, napi_callback_info info)
{
  (void)info;
  napi_value out;
  struct kc_state *st = kc_state(env);
  if (!st) return NULL;
  struct kc_conn *idlest = NULL;
  for (uint32_t i = 0; i < st->n_slots; i++) {
    struct kc_conn *c = st->slots[i];
    if (c && !c->closing && (!idlest || c->last_active < idlest->last_active)) idlest = c;
  }
  if (idlest) kc_close(idlest, NULL);
  napi_get_boolean(env, idlest != NULL, &out);
  return out;
}

/* kcLogin(connId, tokenId, loggedIn): the connection's login to a token (its current identity's id), as JavaScript decided it. */
static napi_value js_kc_login(napi_env env, napi_callback_info info)
{
  napi_value argv[3];
  struct kc_conn *c = kc_conn_arg(env, info, 3, argv, "kcLogin(connId, tokenId, loggedIn) expected");
  uint32_t token;
  bool on = false;
  if (!c || c->closing || !kc_uint32_arg(env, argv[1], &token) || napi_get_value_bool(env, argv[2], &on) != napi_ok) return NULL;
  size_t i = 0;
  while (i < c->n_tokens && c->tokens[i] < token) i++;
  int present = i < c->n_tokens && c->tokens[i] == token;
  if (on && !present) {
    if (c->n_tokens == c->tokens_cap) {
      size_t cap = c->tokens_cap ? c->tokens_cap * 2 : 4;
      uint32_t *p = realloc(c->tokens, cap * sizeof *p);
      if (!p) return NULL; /* not logged in here: JavaScript answers its requests */
      c->tokens = p;
      c->tokens_cap = cap;
    }
    memmove(c->tokens + i + 1, c->tokens + i, (c->n_tokens - i) * sizeof *c->tokens);
    c->tokens[i] = token;
    c->n_tokens++;
  } else if (!on && present) {
    memmove(c->tokens + i, c->tokens + i + 1, (c->n_tokens - i - 1) * sizeof *c->tokens);
    c->n_tokens--;
  }
  return NULL;
}

/* kcAddKey(keyId, tokenId, handle): a key from rsaKey() or ecdsaKey() that this thread's fast path may sign with. */
static napi_value js_kc_add_key(napi_env env, napi_callback_info info)
{
  size_t argc = 3;
  napi_value argv[3];
  uint32_t key_id, token_id;
  void *handle = NULL;
  int is_ec = 0;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  struct kc_state *st = kc_state(env);
  if (!st) return NULL;
  if (argc < 3 || !kc_uint32_arg(env, argv[0], &key_id) || !kc_uint32_arg(env, argv[1], &token_id)
      || (!tagged_external(env, argv[2], &RSA_KEY_TAG, &handle) && !(is_ec = tagged_external(env, argv[2], &EC_KEY_TAG, &handle)))) {
    napi_throw_type_error(env, NULL, "kcAddKey(keyId, tokenId, handle from rsaKey() or ecdsaKey()) expected");
    return NULL;
  }
  struct kc_key *k = kc_key_find(st, key_id);
  if (k) { /* the same key again (its token's identity changed): only its token */
    k->token_id = token_id;
    return NULL;
  }
  k = calloc(1, sizeof *k);
  if (!k || napi_create_reference(env, argv[2], 1, &k->ref) != napi_ok) { free(k); napi_throw_error(env, NULL, "out of memory"); return NULL; }
  k->key_id = key_id;
  k->token_id = token_id;
  k->is_ec = is_ec;
  k->handle = handle;
  k->next = st->keys[key_id % KC_KEY_BUCKETS];
  st->keys[key_id % KC_KEY_BUCKETS] = k;
  return NULL;
}

/* kcRemoveKey(keyId): its signatures no longer go through here (take its counts first). */
static napi_value js_kc_remove_key(napi_env env, napi_callback_info info)
{
  size_t argc = 1;
  napi_value argv[1];
  uint32_t key_id;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  struct kc_state *st = kc_state(env);
  if (!st) return NULL;
  if (argc < 1 || !kc_uint32_arg(env, argv[0], &key_id)) { napi_throw_type_error(env, NULL, "kcRemoveKey(keyId) expected"); return NULL; }
  for (struct kc_key **p = &st->keys[key_id % KC_KEY_BUCKETS]; *p; p = &(*p)->next) {
    if ((*p)->key_id == key_id) {
      struct kc_key *k = *p;
      *p = k->next;
      napi_delete_reference(env, k->ref);
      free(k);
      break;
    }
  }
  return NULL;
}

/* kcSetGeneration(generation): the key store's generation, which every reply carries. */
static napi_value js_kc_set_generation(napi_env env, napi_callback_info info)
{
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  struct kc_state *st = kc_state(env);
  if (!st) return NULL;
  if (argc < 1 || !kc_uint32_arg(env, argv[0], &st->generation)) napi_throw_type_error(env, NULL, "kcSetGeneration(generation) expected");
  return NULL;
}

/* kcTakeStats() -> [[keyId, signatures, seconds, ...bucket counts], ...] for the keys that signed here since the last call. */
static napi_value js_kc_take_stats(napi_env env, napi_callback_info info)
{
  (void)info;
  struct kc_state *st = kc_state(env);
  if (!st) return NULL;
  napi_value out;
  napi_create_array(env, &out);
  uint32_t n = 0;
  for (uint32_t b = 0; b < KC_KEY_BUCKETS; b++) {
    for (struct kc_key *k = st->keys[b]; k; k = k->next) {
      if (!k->signs) continue;
      napi_value row, v;
      napi_create_array_with_length(env, 3 + st->n_bounds + 1, &row);
      napi_create_uint32(env, k->key_id, &v); napi_set_element(env, row, 0, v);
      napi_create_double(env, (double)k->signs, &v); napi_set_element(env, row, 1, v);
      napi_create_double(env, k->seconds, &v); napi_set_element(env, row, 2, v);
      for (uint32_t i = 0; i <= st->n_bounds; i++) { napi_create_double(env, (double)k->buckets[i], &v); napi_set_element(env, row, 3 + i, v); }
      napi_set_element(env, out, n++, row);
      k->signs = 0;
      k->seconds = 0;
      memset(k->buckets, 0, sizeof k->buckets);
    }
  }
  return out;
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
    { "kcInit", NULL, js_kc_init, NULL, NULL, NULL, napi_default, NULL },
    { "kcServe", NULL, js_kc_serve, NULL, NULL, NULL, napi_default, NULL },
    { "kcSend", NULL, js_kc_send, NULL, NULL, NULL, napi_default, NULL },
    { "kcResume", NULL, js_kc_resume, NULL, NULL, NULL, napi_default, NULL },
    { "kcEnd", NULL, js_kc_end, NULL, NULL, NULL, napi_default, NULL },
    { "kcCloseIdlest", NULL, js_kc_close_idlest, NULL, NULL, NULL, napi_default, NULL },
    { "kcLogin", NULL, js_kc_login, NULL, NULL, NULL, napi_default, NULL },
    { "kcAddKey", NULL, js_kc_add_key, NULL, NULL, NULL, napi_default, NULL },
    { "kcRemoveKey", NULL, js_kc_remove_key, NULL, NULL, NULL, napi_default, NULL },
    { "kcSetGeneration", NULL, js_kc_set_generation, NULL, NULL, NULL, napi_default, NULL },
    { "kcTakeStats", NULL, js_kc_take_stats, NULL, NULL, NULL, napi_default, NULL },
  };
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)

/*
 * nitro-acm PKCS#11 module (v2.40): every token held by the enclave app appears
 * as a slot; private keys never leave the enclave. Public objects (certificates,
 * public keys, token info) are fetched with one LIST and cached; each reply
 * carries the enclave's generation number, so a change is noticed for free and
 * the cache refetched. Each private-key operation is one round trip.
 *
 * Locking: one module mutex guards slots, objects and sessions; it is never held
 * across a round trip to the enclave (conn.c has its own locks), so threads of
 * httpd's event MPM sign in parallel.
 */
#include "module.h"

/* ---------- state ---------- */

pthread_mutex_t M = PTHREAD_MUTEX_INITIALIZER;
pthread_once_t atfork_once = PTHREAD_ONCE_INIT;
int initialized;
pid_t init_pid;
conn_address address;
char address_text[160];
int timeout_ms = DEFAULT_TIMEOUT_MS;

kw_token_list list;
int have_list;
int list_dirty;
uint32_t list_generation;
struct timespec last_contact;

struct slot *slots;
size_t nslots, slots_cap;
/* Open addressing on the label (slot index + 1; 0 = empty), rebuilt with each list. */
size_t *label_index;
size_t label_index_cap;
struct object *objects;
size_t nobjects, objects_cap;
/* Open addressing on the fingerprint (a SHA-256, so its first bytes hash well); capacity a power of two. */
struct handle_entry *handles;
size_t nhandles, handles_cap;
/* objects[] index of each handle, open addressing, rebuilt with the list: O(1) lookups per operation. */
struct object_ref *object_at;
size_t object_at_cap;
CK_OBJECT_HANDLE next_object_handle = 1;

struct session **sessions;
size_t nsessions_cap;

/* ---------- general ---------- */

static CK_FUNCTION_LIST function_list;

/*
 * fork() while another thread is inside the module: prepare takes the module's
 * lock and then the connection's (the order every other path takes them in), so
 * the child gets tables no thread was half-way through changing; the parent lets
 * go of both; the child, the only thread left, starts them afresh.
 */
static void atfork_prepare(void)
{
  pthread_mutex_lock(&M);
  conn_atfork_prepare();
}

static void atfork_parent(void)
{
  conn_atfork_parent();
  pthread_mutex_unlock(&M);
}

static void atfork_child(void)
{
  pthread_mutex_init(&M, NULL);
  conn_after_fork_child();
}

static void install_atfork(void)
{
  pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
}

/* pReserved (p11-kit's x-init-reserved) may carry "ADDRESS [timeout-ms=N]". */
static CK_RV configure(const char *reserved)
{
  const char *env = getenv("NITRO_ACM_KEY_ADDRESS");
  char text[sizeof address_text];
  const char *src = env && *env ? env : reserved && *reserved ? reserved : KW_DEFAULT_KEY_ADDRESS;
  snprintf(text, sizeof text, "%s", src);
  int t = DEFAULT_TIMEOUT_MS;
  char *sp = strchr(text, ' ');
  if (sp) {
    *sp++ = 0;
    while (*sp == ' ') sp++;
    if (strncmp(sp, "timeout-ms=", 11) == 0) t = atoi(sp + 11);
  }
  const char *envt = getenv("NITRO_ACM_TIMEOUT_MS");
  if (envt && *envt) t = atoi(envt);
  if (t < 10 || t > 600000) t = DEFAULT_TIMEOUT_MS;
  if (conn_parse_address(text, &address) != 0) {
    nacm_log("nitro-acm-p11: cannot parse the enclave address \"%s\" (expected unix:path=... or vsock:cid=N;port=N)", text);
    return CKR_ARGUMENTS_BAD;
  }
  snprintf(address_text, sizeof address_text, "%s", text);
  timeout_ms = t;
  conn_configure(&address, timeout_ms);
  return CKR_OK;
}

/*
 * Reads the C string at p into out without trusting p: PKCS#11 says pReserved is
 * NULL, p11-kit's x-init-reserved makes it a string, and anything else (such as
 * google/pkcs11test's (void *)1) must be an error, not a crash. process_vm_readv
 * on this process reports an unreadable address as EFAULT instead of faulting;
 * reads stop at page boundaries so a string at the end of a mapping is whole.
 * Returns 0 with a NUL-terminated copy, -1 if unreadable or longer than cap - 1.
 */
static int read_untrusted_string(const void *p, char *out, size_t cap)
{
  size_t got = 0;
  long page = sysconf(_SC_PAGESIZE);
  if (page <= 0) page = 4096;
  while (got < cap - 1) {
    uintptr_t at = (uintptr_t)p + got;
    size_t want = (size_t)page - (at % (size_t)page);
    if (want > cap - 1 - got) want = cap - 1 - got;
    struct iovec local = { out + got, want }, remote = { (void *)at, want };
    ssize_t n = process_vm_readv(getpid(), &local, 1, &remote, 1, 0);
    if (n <= 0) return -1;
    void *nul = memchr(out + got, 0, (size_t)n);
    if (nul) return 0;
    got += (size_t)n;
  }
  return -1;
}

/*
 * p11-kit's init string (docs/operations.md): pReserved is recognised only when it
 * is a readable string that parses as an address ("unix:..." or "vsock:...",
 * optionally followed by " timeout-ms=N"); any other non-NULL pReserved is
 * CKR_ARGUMENTS_BAD, as PKCS#11 requires, whatever the environment says.
 */
static CK_RV check_reserved(const void *reserved, char *out, size_t cap)
{
  if (!reserved) { out[0] = 0; return CKR_OK; }
  if (read_untrusted_string(reserved, out, cap) != 0) return CKR_ARGUMENTS_BAD;
  conn_address probe;
  char addr[sizeof address_text];
  snprintf(addr, sizeof addr, "%s", out);
  char *sp = strchr(addr, ' ');
  if (sp) *sp = 0;
  return conn_parse_address(addr, &probe) == 0 ? CKR_OK : CKR_ARGUMENTS_BAD;
}

CK_RV C_Initialize(CK_VOID_PTR pInitArgs)
{
  CK_C_INITIALIZE_ARGS *args = pInitArgs;
  const void *reserved = NULL;
  if (args) {
    int some = args->CreateMutex || args->DestroyMutex || args->LockMutex || args->UnlockMutex;
    int all = args->CreateMutex && args->DestroyMutex && args->LockMutex && args->UnlockMutex;
    if (some && !all) return CKR_ARGUMENTS_BAD;
    /* We always use OS locking; an application that offers only its own mutexes still gets correct locking. */
    reserved = args->pReserved;
  }
  char reserved_text[sizeof address_text];
  if (check_reserved(reserved, reserved_text, sizeof reserved_text) != CKR_OK) return CKR_ARGUMENTS_BAD;
  reserved = reserved_text[0] ? reserved_text : NULL;
  pthread_once(&atfork_once, install_atfork);
  pthread_mutex_lock(&M);
  if (initialized && init_pid == getpid()) {
    pthread_mutex_unlock(&M);
    return CKR_CRYPTOKI_ALREADY_INITIALIZED;
  }
  if (initialized) {
    /* Initialized again in a forked child (libp11 and p11-kit do this): start afresh, same address. */
    reset_all_locked();
    init_pid = getpid();
    pthread_mutex_unlock(&M);
    return CKR_OK;
  }
  CK_RV rv = configure(reserved ? reserved_text : NULL);
  if (rv == CKR_OK) {
    initialized = 1;
    init_pid = getpid();
  }
  pthread_mutex_unlock(&M);
  return rv;
}

CK_RV C_Finalize(CK_VOID_PTR pReserved)
{
  if (pReserved) return CKR_ARGUMENTS_BAD;
  pthread_mutex_lock(&M);
  CK_RV rv = initialized ? CKR_OK : CKR_CRYPTOKI_NOT_INITIALIZED;
  if (initialized) {
    reset_all_locked();
    initialized = 0;
  }
  pthread_mutex_unlock(&M);
  if (rv == CKR_OK) conn_close();
  return rv;
}

CK_RV C_GetInfo(CK_INFO_PTR pInfo)
{
  REQUIRE_INIT();
  if (!pInfo) return CKR_ARGUMENTS_BAD;
  memset(pInfo, 0, sizeof *pInfo);
  pInfo->cryptokiVersion.major = 2;
  pInfo->cryptokiVersion.minor = 40;
  pad_copy(pInfo->manufacturerID, sizeof pInfo->manufacturerID, "nitro-acm");
  pad_copy(pInfo->libraryDescription, sizeof pInfo->libraryDescription, "nitro-acm enclave keys");
  pInfo->libraryVersion.major = 0;
  pInfo->libraryVersion.minor = 1;
  return CKR_OK;
}

EXPORT CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR ppFunctionList)
{
  if (!ppFunctionList) return CKR_ARGUMENTS_BAD;
  *ppFunctionList = &function_list;
  return CKR_OK;
}

/* ---------- slots and tokens ---------- */

/*
 * Every token the process has seen keeps its slot, with the token present or
 * not: p11-kit's proxy maps slot ids when it is initialized (again in every
 * forked child), and libp11 waits forever for a session on a slot the proxy
 * does not know. So a slot must stay listed while its token is away (the enclave
 * restarting, the token being provisioned again): tokenPresent=FALSE lists them all.
 */
/*
 * Callers ask for the count, then for the list: the list must not grow between
 * the two (a token added meanwhile), or the second call fails with
 * CKR_BUFFER_TOO_SMALL, which libp11 and graphene-pk11 do not retry. So the
 * enclave is asked for changes on the count query, and on a list query only when
 * this thread made no count query in the last second.
 */
static _Thread_local struct timespec count_query_at;

CK_RV C_GetSlotList(CK_BBOOL tokenPresent, CK_SLOT_ID_PTR pSlotList, CK_ULONG_PTR pulCount)
{
  REQUIRE_INIT();
  if (!pulCount) return CKR_ARGUMENTS_BAD;
  /* Unreachable enclave: list what we had (or nothing) so p11-kit still serves other modules. */
  if (!pSlotList) {
    (void)sync_list(SYNC_PING_IF_QUIET);
    clock_gettime(CLOCK_MONOTONIC, &count_query_at);
  } else if (count_query_at.tv_sec == 0 || ms_since(&count_query_at) > 1000) {
    (void)sync_list(SYNC_PING_IF_QUIET);
  }
  pthread_mutex_lock(&M);
  CK_ULONG n = 0;
  for (size_t i = 0; i < nslots; i++) if (slots[i].present || !tokenPresent) n++;
  CK_RV rv = CKR_OK;
  if (pSlotList) {
    if (*pulCount < n) rv = CKR_BUFFER_TOO_SMALL;
    else {
      CK_ULONG j = 0;
      for (size_t i = 0; i < nslots; i++) if (slots[i].present || !tokenPresent) pSlotList[j++] = i + 1;
    }
  }
  *pulCount = n;
  pthread_mutex_unlock(&M);
  return rv;
}

/* Caller holds M. A slot with its token present, or NULL with *rv saying why not. */
static struct slot *slot_get_rv(CK_SLOT_ID id, CK_RV *rv)
{
  if (id == 0 || id > nslots) { *rv = CKR_SLOT_ID_INVALID; return NULL; }
  if (!slots[id - 1].present) { *rv = CKR_TOKEN_NOT_PRESENT; return NULL; }
  *rv = CKR_OK;
  return &slots[id - 1];
}

CK_RV C_GetSlotInfo(CK_SLOT_ID slotID, CK_SLOT_INFO_PTR pInfo)
{
  REQUIRE_INIT();
  if (!pInfo) return CKR_ARGUMENTS_BAD;
  (void)sync_for_slot(slotID); /* slot ids are good from C_Initialize on, as for C_OpenSession */
  pthread_mutex_lock(&M);
  CK_RV rv = CKR_OK;
  if (slotID == 0 || slotID > nslots) { rv = CKR_SLOT_ID_INVALID; goto out; }
  struct slot *s = &slots[slotID - 1];
  memset(pInfo, 0, sizeof *pInfo);
  char desc[64];
  snprintf(desc, sizeof desc, "nitro-acm enclave token %s", s->label);
  pad_copy(pInfo->slotDescription, sizeof pInfo->slotDescription, desc);
  pad_copy(pInfo->manufacturerID, sizeof pInfo->manufacturerID, "nitro-acm");
  pInfo->flags = (s->present ? CKF_TOKEN_PRESENT : 0) | CKF_HW_SLOT;
out:
  pthread_mutex_unlock(&M);
  return rv;
}

CK_RV C_GetTokenInfo(CK_SLOT_ID slotID, CK_TOKEN_INFO_PTR pInfo)
{
  REQUIRE_INIT();
  if (!pInfo) return CKR_ARGUMENTS_BAD;
  (void)sync_for_slot(slotID); /* slot ids are good from C_Initialize on, as for C_OpenSession */
  pthread_mutex_lock(&M);
  CK_RV rv;
  struct slot *s = slot_get_rv(slotID, &rv);
  if (!s) goto out;
  memset(pInfo, 0, sizeof *pInfo);
  pad_copy(pInfo->label, sizeof pInfo->label, s->label);
  pad_copy(pInfo->manufacturerID, sizeof pInfo->manufacturerID, "nitro-acm");
  pad_copy(pInfo->model, sizeof pInfo->model, "Nitro Enclave");
  pad_copy(pInfo->serialNumber, sizeof pInfo->serialNumber, list.tokens[s->token_index].serial);
  pInfo->flags = CKF_LOGIN_REQUIRED | CKF_USER_PIN_INITIALIZED | CKF_TOKEN_INITIALIZED;
  pInfo->ulMaxSessionCount = CK_EFFECTIVELY_INFINITE;
  pInfo->ulSessionCount = CK_UNAVAILABLE_INFORMATION;
  pInfo->ulMaxRwSessionCount = CK_EFFECTIVELY_INFINITE;
  pInfo->ulRwSessionCount = CK_UNAVAILABLE_INFORMATION;
  pInfo->ulMaxPinLen = KW_MAX_PIN;
  pInfo->ulMinPinLen = KW_MIN_PIN;
  pInfo->ulTotalPublicMemory = CK_UNAVAILABLE_INFORMATION;
  pInfo->ulFreePublicMemory = CK_UNAVAILABLE_INFORMATION;
  pInfo->ulTotalPrivateMemory = CK_UNAVAILABLE_INFORMATION;
  pInfo->ulFreePrivateMemory = CK_UNAVAILABLE_INFORMATION;
  pInfo->hardwareVersion.major = 1;
  pInfo->firmwareVersion.major = 1;
  pad_copy(pInfo->utcTime, sizeof pInfo->utcTime, "");
out:
  pthread_mutex_unlock(&M);
  return rv;
}

static int mech_known(CK_MECHANISM_TYPE t)
{
  for (size_t i = 0; i < NMECHS; i++) if (MECHS[i] == t) return 1;
  return 0;
}

CK_RV C_GetMechanismList(CK_SLOT_ID slotID, CK_MECHANISM_TYPE_PTR pMechanismList, CK_ULONG_PTR pulCount)
{
  REQUIRE_INIT();
  if (!pulCount) return CKR_ARGUMENTS_BAD;
  (void)sync_for_slot(slotID); /* slot ids are good from C_Initialize on, as for C_OpenSession */
  pthread_mutex_lock(&M);
  CK_RV why;
  int ok = slot_get_rv(slotID, &why) != NULL;
  pthread_mutex_unlock(&M);
  if (!ok) return why;
  CK_RV rv = CKR_OK;
  if (pMechanismList) {
    if (*pulCount < NMECHS) rv = CKR_BUFFER_TOO_SMALL;
    else memcpy(pMechanismList, MECHS, NMECHS * sizeof MECHS[0]);
  }
  *pulCount = NMECHS;
  return rv;
}

CK_RV C_GetMechanismInfo(CK_SLOT_ID slotID, CK_MECHANISM_TYPE type, CK_MECHANISM_INFO_PTR pInfo)
{
  REQUIRE_INIT();
  if (!pInfo) return CKR_ARGUMENTS_BAD;
  (void)sync_for_slot(slotID); /* slot ids are good from C_Initialize on, as for C_OpenSession */
  pthread_mutex_lock(&M);
  CK_RV why;
  int ok = slot_get_rv(slotID, &why) != NULL;
  pthread_mutex_unlock(&M);
  if (!ok) return why;
  if (!mech_known(type)) return CKR_MECHANISM_INVALID;
  int ec = type == CKM_ECDSA || type == CKM_ECDSA_SHA256 || type == CKM_ECDSA_SHA384 || type == CKM_ECDSA_SHA512;
  pInfo->ulMinKeySize = ec ? 256 : MIN_KEY_BITS;
  pInfo->ulMaxKeySize = ec ? 384 : MAX_KEY_BITS;
  pInfo->flags = CKF_HW;
  if (ec) pInfo->flags |= CKF_SIGN | CKF_EC_F_P | CKF_EC_NAMEDCURVE | CKF_EC_UNCOMPRESS;
  else if (type == CKM_RSA_PKCS || type == CKM_RSA_X_509) pInfo->flags |= CKF_SIGN | CKF_DECRYPT;
  else if (type == CKM_RSA_PKCS_OAEP) pInfo->flags |= CKF_DECRYPT;
  else pInfo->flags |= CKF_SIGN;
  return CKR_OK;
}

/* ---------- not supported ---------- */

#define UNSUPPORTED_BODY { REQUIRE_INIT(); return CKR_FUNCTION_NOT_SUPPORTED; }
#define U(x) (void)(x)
CK_RV C_InitToken(CK_SLOT_ID a, CK_UTF8CHAR_PTR b, CK_ULONG c, CK_UTF8CHAR_PTR d) { U(a); U(b); U(c); U(d); UNSUPPORTED_BODY }
CK_RV C_InitPIN(CK_SESSION_HANDLE a, CK_UTF8CHAR_PTR b, CK_ULONG c) { U(a); U(b); U(c); UNSUPPORTED_BODY }
CK_RV C_SetPIN(CK_SESSION_HANDLE a, CK_UTF8CHAR_PTR b, CK_ULONG c, CK_UTF8CHAR_PTR d, CK_ULONG e) { U(a); U(b); U(c); U(d); U(e); UNSUPPORTED_BODY }
CK_RV C_GetOperationState(CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG_PTR c) { U(a); U(b); U(c); UNSUPPORTED_BODY }
CK_RV C_SetOperationState(CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_OBJECT_HANDLE d, CK_OBJECT_HANDLE e) { U(a); U(b); U(c); U(d); U(e); UNSUPPORTED_BODY }
CK_RV C_CreateObject(CK_SESSION_HANDLE a, CK_ATTRIBUTE_PTR b, CK_ULONG c, CK_OBJECT_HANDLE_PTR d) { U(a); U(b); U(c); U(d); UNSUPPORTED_BODY }
CK_RV C_CopyObject(CK_SESSION_HANDLE a, CK_OBJECT_HANDLE b, CK_ATTRIBUTE_PTR c, CK_ULONG d, CK_OBJECT_HANDLE_PTR e) { U(a); U(b); U(c); U(d); U(e); UNSUPPORTED_BODY }
CK_RV C_DestroyObject(CK_SESSION_HANDLE a, CK_OBJECT_HANDLE b) { U(a); U(b); UNSUPPORTED_BODY }
CK_RV C_SetAttributeValue(CK_SESSION_HANDLE a, CK_OBJECT_HANDLE b, CK_ATTRIBUTE_PTR c, CK_ULONG d) { U(a); U(b); U(c); U(d); UNSUPPORTED_BODY }
CK_RV C_EncryptInit(CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_OBJECT_HANDLE c) { U(a); U(b); U(c); UNSUPPORTED_BODY }
CK_RV C_Encrypt(CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e) { U(a); U(b); U(c); U(d); U(e); UNSUPPORTED_BODY }
CK_RV C_EncryptUpdate(CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e) { U(a); U(b); U(c); U(d); U(e); UNSUPPORTED_BODY }
CK_RV C_EncryptFinal(CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG_PTR c) { U(a); U(b); U(c); UNSUPPORTED_BODY }
CK_RV C_DecryptUpdate(CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e) { U(a); U(b); U(c); U(d); U(e); UNSUPPORTED_BODY }
CK_RV C_DecryptFinal(CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG_PTR c) { U(a); U(b); U(c); UNSUPPORTED_BODY }
CK_RV C_DigestInit(CK_SESSION_HANDLE a, CK_MECHANISM_PTR b) { U(a); U(b); UNSUPPORTED_BODY }
CK_RV C_Digest(CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e) { U(a); U(b); U(c); U(d); U(e); UNSUPPORTED_BODY }
CK_RV C_DigestUpdate(CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c) { U(a); U(b); U(c); UNSUPPORTED_BODY }
CK_RV C_DigestKey(CK_SESSION_HANDLE a, CK_OBJECT_HANDLE b) { U(a); U(b); UNSUPPORTED_BODY }
CK_RV C_DigestFinal(CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG_PTR c) { U(a); U(b); U(c); UNSUPPORTED_BODY }
CK_RV C_SignRecoverInit(CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_OBJECT_HANDLE c) { U(a); U(b); U(c); UNSUPPORTED_BODY }
CK_RV C_SignRecover(CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e) { U(a); U(b); U(c); U(d); U(e); UNSUPPORTED_BODY }
CK_RV C_VerifyInit(CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_OBJECT_HANDLE c) { U(a); U(b); U(c); UNSUPPORTED_BODY }
CK_RV C_Verify(CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG e) { U(a); U(b); U(c); U(d); U(e); UNSUPPORTED_BODY }
CK_RV C_VerifyUpdate(CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c) { U(a); U(b); U(c); UNSUPPORTED_BODY }
CK_RV C_VerifyFinal(CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c) { U(a); U(b); U(c); UNSUPPORTED_BODY }
CK_RV C_VerifyRecoverInit(CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_OBJECT_HANDLE c) { U(a); U(b); U(c); UNSUPPORTED_BODY }
CK_RV C_VerifyRecover(CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e) { U(a); U(b); U(c); U(d); U(e); UNSUPPORTED_BODY }
CK_RV C_DigestEncryptUpdate(CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e) { U(a); U(b); U(c); U(d); U(e); UNSUPPORTED_BODY }
CK_RV C_DecryptDigestUpdate(CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e) { U(a); U(b); U(c); U(d); U(e); UNSUPPORTED_BODY }
CK_RV C_SignEncryptUpdate(CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e) { U(a); U(b); U(c); U(d); U(e); UNSUPPORTED_BODY }
CK_RV C_DecryptVerifyUpdate(CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c, CK_BYTE_PTR d, CK_ULONG_PTR e) { U(a); U(b); U(c); U(d); U(e); UNSUPPORTED_BODY }
CK_RV C_GenerateKey(CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_ATTRIBUTE_PTR c, CK_ULONG d, CK_OBJECT_HANDLE_PTR e) { U(a); U(b); U(c); U(d); U(e); UNSUPPORTED_BODY }
CK_RV C_GenerateKeyPair(CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_ATTRIBUTE_PTR c, CK_ULONG d, CK_ATTRIBUTE_PTR e, CK_ULONG f, CK_OBJECT_HANDLE_PTR g, CK_OBJECT_HANDLE_PTR h) { U(a); U(b); U(c); U(d); U(e); U(f); U(g); U(h); UNSUPPORTED_BODY }
CK_RV C_WrapKey(CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_OBJECT_HANDLE c, CK_OBJECT_HANDLE d, CK_BYTE_PTR e, CK_ULONG_PTR f) { U(a); U(b); U(c); U(d); U(e); U(f); UNSUPPORTED_BODY }
CK_RV C_UnwrapKey(CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_OBJECT_HANDLE c, CK_BYTE_PTR d, CK_ULONG e, CK_ATTRIBUTE_PTR f, CK_ULONG g, CK_OBJECT_HANDLE_PTR h) { U(a); U(b); U(c); U(d); U(e); U(f); U(g); U(h); UNSUPPORTED_BODY }
CK_RV C_DeriveKey(CK_SESSION_HANDLE a, CK_MECHANISM_PTR b, CK_OBJECT_HANDLE c, CK_ATTRIBUTE_PTR d, CK_ULONG e, CK_OBJECT_HANDLE_PTR f) { U(a); U(b); U(c); U(d); U(e); U(f); UNSUPPORTED_BODY }
/* No RNG: pkcs11-tool and others skip their random tests on CKR_RANDOM_NO_RNG. */
/* The tokens have no random number generator of their own to offer. */
CK_RV C_SeedRandom(CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c) { U(b); U(c); REQUIRE_INIT(); REQUIRE_SESSION(a); return CKR_RANDOM_NO_RNG; }
CK_RV C_GenerateRandom(CK_SESSION_HANDLE a, CK_BYTE_PTR b, CK_ULONG c) { U(b); U(c); REQUIRE_INIT(); REQUIRE_SESSION(a); return CKR_RANDOM_NO_RNG; }
CK_RV C_GetFunctionStatus(CK_SESSION_HANDLE a) { REQUIRE_INIT(); REQUIRE_SESSION(a); return CKR_FUNCTION_NOT_PARALLEL; }
CK_RV C_CancelFunction(CK_SESSION_HANDLE a) { REQUIRE_INIT(); REQUIRE_SESSION(a); return CKR_FUNCTION_NOT_PARALLEL; }
CK_RV C_WaitForSlotEvent(CK_FLAGS a, CK_SLOT_ID_PTR b, CK_VOID_PTR c) { U(a); U(b); U(c); UNSUPPORTED_BODY }

static CK_FUNCTION_LIST function_list = {
  { 2, 40 },
  C_Initialize, C_Finalize, C_GetInfo, C_GetFunctionList, C_GetSlotList, C_GetSlotInfo, C_GetTokenInfo,
  C_GetMechanismList, C_GetMechanismInfo, C_InitToken, C_InitPIN, C_SetPIN, C_OpenSession, C_CloseSession,
  C_CloseAllSessions, C_GetSessionInfo, C_GetOperationState, C_SetOperationState, C_Login, C_Logout,
  C_CreateObject, C_CopyObject, C_DestroyObject, C_GetObjectSize, C_GetAttributeValue, C_SetAttributeValue,
  C_FindObjectsInit, C_FindObjects, C_FindObjectsFinal, C_EncryptInit, C_Encrypt, C_EncryptUpdate,
  C_EncryptFinal, C_DecryptInit, C_Decrypt, C_DecryptUpdate, C_DecryptFinal, C_DigestInit, C_Digest,
  C_DigestUpdate, C_DigestKey, C_DigestFinal, C_SignInit, C_Sign, C_SignUpdate, C_SignFinal,
  C_SignRecoverInit, C_SignRecover, C_VerifyInit, C_Verify, C_VerifyUpdate, C_VerifyFinal,
  C_VerifyRecoverInit, C_VerifyRecover, C_DigestEncryptUpdate, C_DecryptDigestUpdate, C_SignEncryptUpdate,
  C_DecryptVerifyUpdate, C_GenerateKey, C_GenerateKeyPair, C_WrapKey, C_UnwrapKey, C_DeriveKey,
  C_SeedRandom, C_GenerateRandom, C_GetFunctionStatus, C_CancelFunction, C_WaitForSlotEvent,
};

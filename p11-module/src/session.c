/*
 * Sessions and login, and the objects an application sees through a session:
 * find and attributes.
 */
#include "module.h"

/* ---------- sessions ---------- */

struct session *session_get(CK_SESSION_HANDLE h)
{
  if (h == 0 || h > nsessions_cap) return NULL;
  return sessions[h - 1];
}

void op_reset(struct session *s)
{
  if (s->md) EVP_MD_CTX_free(s->md);
  s->md = NULL;
  free(s->oaep_label);
  s->oaep_label = NULL;
  s->oaep_label_len = 0;
  s->op = OP_NONE;
  s->acc_len = 0;
  s->acc_overflow = 0;
}

static void session_free(struct session *s)
{
  op_reset(s);
  free(s->found);
  free(s);
}

void logout_slot(size_t slot)
{
  slots[slot].logged_in = 0;
  OPENSSL_cleanse(slots[slot].pin, sizeof slots[slot].pin);
  slots[slot].pin_len = 0;
}

void reset_all_locked(void)
{
  for (size_t i = 0; i < nsessions_cap; i++)
    if (sessions[i]) session_free(sessions[i]);
  free(sessions);
  sessions = NULL;
  nsessions_cap = 0;
  /*
   * Slot ids (token label -> slot) and object handles are kept for the life of
   * the process, logged out and absent until the next list: a forked child that
   * initializes again must give every slot and object the id the parent handed
   * out. libp11 re-finds its keys after a fork, but in a multi-threaded child
   * (httpd's event MPM) other threads may use the parent's ids meanwhile, and a
   * token added or removed since must not shift the others' slot ids. The
   * cached token list (public: certificates, public keys) is kept too, marked
   * stale: a child forked while the enclave is away (restarting) still finds its
   * keys, and signs as soon as the enclave is back.
   */
  for (size_t i = 0; i < nslots; i++) logout_slot(i), slots[i].nsessions = 0;
  if (have_list) list_dirty = 1;
}



/*
 * A bad session handle is reported before any other error (bad arguments, an
 * unsupported operation), as conformance suites check: looked up first here,
 * and again under the lock where the session is used.
 */
CK_RV session_check(CK_SESSION_HANDLE h)
{
  pthread_mutex_lock(&M);
  int ok = session_get(h) != NULL;
  pthread_mutex_unlock(&M);
  return ok ? CKR_OK : CKR_SESSION_HANDLE_INVALID;
}

/* ---------- sessions ---------- */

CK_RV C_OpenSession(CK_SLOT_ID slotID, CK_FLAGS flags, CK_VOID_PTR pApplication, CK_NOTIFY Notify, CK_SESSION_HANDLE_PTR phSession)
{
  (void)pApplication;
  (void)Notify;
  REQUIRE_INIT();
  if (!phSession) return CKR_ARGUMENTS_BAD;
  if (!(flags & CKF_SERIAL_SESSION)) return CKR_SESSION_PARALLEL_NOT_SUPPORTED;
  (void)sync_for_slot(slotID);
  pthread_mutex_lock(&M);
  CK_RV rv = CKR_OK;
  /*
   * A slot whose token is away for a moment (the enclave restarting, the token
   * being provisioned again) still opens sessions: libp11 waits, without a
   * timeout, for another thread's session when C_OpenSession fails, which hangs
   * a web-server thread. Operations on the session fail until the token is back.
   */
  if (slotID == 0 || slotID > nslots) { rv = CKR_SLOT_ID_INVALID; goto out; }
  struct session *s = calloc(1, sizeof *s);
  if (!s) { rv = CKR_HOST_MEMORY; goto out; }
  s->slot = slotID - 1;
  s->flags = flags;
  size_t i;
  for (i = 0; i < nsessions_cap && sessions[i]; i++) {}
  if (i == nsessions_cap) {
    size_t cap = nsessions_cap ? nsessions_cap * 2 : 16;
    struct session **grown = realloc(sessions, cap * sizeof *grown);
    if (!grown) { free(s); rv = CKR_HOST_MEMORY; goto out; }
    memset(grown + nsessions_cap, 0, (cap - nsessions_cap) * sizeof *grown);
    sessions = grown;
    nsessions_cap = cap;
  }
  sessions[i] = s;
  s->handle = i + 1;
  slots[s->slot].nsessions++;
  *phSession = s->handle;
out:
  pthread_mutex_unlock(&M);
  return rv;
}

static void close_session_locked(struct session *s)
{
  size_t slot = s->slot;
  sessions[s->handle - 1] = NULL;
  session_free(s);
  /* PKCS#11: closing the last session of a token logs the application out of it. */
  if (--slots[slot].nsessions == 0) logout_slot(slot);
}

CK_RV C_CloseSession(CK_SESSION_HANDLE hSession)
{
  REQUIRE_INIT();
  pthread_mutex_lock(&M);
  CK_RV rv = CKR_OK;
  struct session *s = session_get(hSession);
  if (!s) { rv = CKR_SESSION_HANDLE_INVALID; goto out; }
  close_session_locked(s);
out:
  pthread_mutex_unlock(&M);
  return rv;
}

CK_RV C_CloseAllSessions(CK_SLOT_ID slotID)
{
  REQUIRE_INIT();
  pthread_mutex_lock(&M);
  CK_RV rv = CKR_OK;
  if (slotID == 0 || slotID > nslots) { rv = CKR_SLOT_ID_INVALID; goto out; }
  for (size_t i = 0; i < nsessions_cap; i++)
    if (sessions[i] && sessions[i]->slot == slotID - 1) close_session_locked(sessions[i]);
out:
  pthread_mutex_unlock(&M);
  return rv;
}

CK_RV C_GetSessionInfo(CK_SESSION_HANDLE hSession, CK_SESSION_INFO_PTR pInfo)
{
  REQUIRE_INIT();
  REQUIRE_SESSION(hSession);
  if (!pInfo) return CKR_ARGUMENTS_BAD;
  pthread_mutex_lock(&M);
  CK_RV rv = CKR_OK;
  struct session *s = session_get(hSession);
  if (!s) { rv = CKR_SESSION_HANDLE_INVALID; goto out; }
  int rw = (s->flags & CKF_RW_SESSION) != 0, user = slots[s->slot].logged_in;
  pInfo->slotID = s->slot + 1;
  pInfo->state = rw ? (user ? CKS_RW_USER_FUNCTIONS : CKS_RW_PUBLIC_SESSION) : (user ? CKS_RO_USER_FUNCTIONS : CKS_RO_PUBLIC_SESSION);
  pInfo->flags = s->flags;
  pInfo->ulDeviceError = 0;
out:
  pthread_mutex_unlock(&M);
  return rv;
}


/*
 * C_Login's checks under M, with one exit path: *ready is set, with the token's
 * label and slot, when the PIN is to be sent to the enclave; otherwise the
 * result is the answer (a bad session or user type, an SO login, a PIN of a
 * length no token has, already logged in).
 */
static CK_RV take_login(CK_SESSION_HANDLE hSession, CK_USER_TYPE userType, CK_UTF8CHAR_PTR pPin, CK_ULONG ulPinLen, char label[KW_MAX_TOKEN_LABEL + 1], size_t *slot_index, int *ready)
{
  *ready = 0;
  pthread_mutex_lock(&M);
  CK_RV rv = CKR_OK;
  struct session *s = session_get(hSession);
  if (!s) { rv = CKR_SESSION_HANDLE_INVALID; goto out; }
  if (userType != CKU_SO && userType != CKU_USER && userType != CKU_CONTEXT_SPECIFIC) { rv = CKR_USER_TYPE_INVALID; goto out; }
  if (!pPin && ulPinLen) { rv = CKR_ARGUMENTS_BAD; goto out; }
  struct slot *slot = &slots[s->slot];
  if (userType == CKU_SO) {
    /*
     * A token with no SO PIN (the agent provisions tokens; nobody administers
     * them through PKCS#11): v2.40's answers, in its order, and never a PIN
     * that works. Nothing is sent to the enclave.
     */
    rv = slot->logged_in ? CKR_USER_ANOTHER_ALREADY_LOGGED_IN : CKR_PIN_INCORRECT;
    for (size_t i = 0; rv == CKR_PIN_INCORRECT && i < nsessions_cap; i++)
      if (sessions[i] && sessions[i]->slot == s->slot && !(sessions[i]->flags & CKF_RW_SESSION)) rv = CKR_SESSION_READ_ONLY_EXISTS;
    goto out;
  }
  /* No PIN of another length was ever given to a token: it is an incorrect one (C_Login has no CKR_PIN_LEN_RANGE). */
  if (ulPinLen < KW_MIN_PIN || ulPinLen > KW_MAX_PIN) { rv = CKR_PIN_INCORRECT; goto out; }
  if (slot->logged_in && userType == CKU_USER) { rv = CKR_USER_ALREADY_LOGGED_IN; goto out; }
  snprintf(label, KW_MAX_TOKEN_LABEL + 1, "%s", slot->label);
  *slot_index = s->slot;
  *ready = 1;
out:
  pthread_mutex_unlock(&M);
  return rv;
}

CK_RV C_Login(CK_SESSION_HANDLE hSession, CK_USER_TYPE userType, CK_UTF8CHAR_PTR pPin, CK_ULONG ulPinLen)
{
  REQUIRE_INIT();
  char label[KW_MAX_TOKEN_LABEL + 1];
  size_t slot_index = 0;
  int ready;
  CK_RV checked = take_login(hSession, userType, pPin, ulPinLen, label, &slot_index, &ready);
  if (!ready) return checked;

  CK_RV answer = CKR_DEVICE_ERROR;
  CK_RV rv = send_login(label, pPin, ulPinLen, &answer);
  uint8_t digest[32];
  SHA256(pPin, ulPinLen, digest);
  if (rv != CKR_OK || answer == CKR_TOKEN_NOT_PRESENT) {
    /*
     * The enclave is away or has not got the token back yet (it is restarting).
     * libp11 logs in once after a fork and never again, so a failure here would
     * leave a web-server worker forked at this moment unable to sign for good.
     * If this is the PIN the enclave accepted before, log in locally; the first
     * operation logs in to the enclave, and a PIN it refuses then logs out.
     */
    pthread_mutex_lock(&M);
    struct slot *sl = &slots[slot_index];
    int known = sl->has_accepted_pin && CRYPTO_memcmp(sl->accepted_pin_digest, digest, sizeof digest) == 0;
    if (known) {
      sl->logged_in = 1;
      memcpy(sl->pin, pPin, ulPinLen);
      sl->pin_len = ulPinLen;
    }
    pthread_mutex_unlock(&M);
    if (known) {
      nacm_log("nitro-acm-p11: token %s: the enclave is not answering; logged in with the PIN it accepted before", label);
      return CKR_OK;
    }
    return rv != CKR_OK ? rv : CKR_TOKEN_NOT_PRESENT;
  }
  if (answer != CKR_OK) return answer == CKR_PIN_INCORRECT || answer == CKR_PIN_LOCKED ? answer : CKR_DEVICE_ERROR;
  pthread_mutex_lock(&M);
  /* Kept in memory to log in again by itself after a fork or an enclave restart. */
  slots[slot_index].logged_in = 1;
  memcpy(slots[slot_index].pin, pPin, ulPinLen);
  slots[slot_index].pin_len = ulPinLen;
  memcpy(slots[slot_index].accepted_pin_digest, digest, sizeof digest);
  slots[slot_index].has_accepted_pin = 1;
  pthread_mutex_unlock(&M);
  return CKR_OK;
}

/* C_Logout's part under M, with one exit path: the token's label, logged out here already. */
static CK_RV take_logout(CK_SESSION_HANDLE hSession, char label[KW_MAX_TOKEN_LABEL + 1])
{
  pthread_mutex_lock(&M);
  CK_RV rv = CKR_OK;
  struct session *s = session_get(hSession);
  if (!s) { rv = CKR_SESSION_HANDLE_INVALID; goto out; }
  if (!slots[s->slot].logged_in) { rv = CKR_USER_NOT_LOGGED_IN; goto out; }
  snprintf(label, KW_MAX_TOKEN_LABEL + 1, "%s", slots[s->slot].label);
  logout_slot(s->slot);
out:
  pthread_mutex_unlock(&M);
  return rv;
}

CK_RV C_Logout(CK_SESSION_HANDLE hSession)
{
  REQUIRE_INIT();
  char label[KW_MAX_TOKEN_LABEL + 1];
  CK_RV rv = take_logout(hSession, label);
  if (rv != CKR_OK) return rv;
  kw_buf req = { 0 };
  uint32_t id = conn_next_id();
  kw_encode_logout(&req, id, label);
  kw_response resp;
  uint8_t *reply = NULL;
  (void)call(&req, id, &resp, &reply); /* logged out locally whatever the enclave says */
  free(reply);
  kw_buf_free(&req);
  return CKR_OK;
}

/* ---------- objects ---------- */

CK_RV C_GetAttributeValue(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject, CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulCount)
{
  REQUIRE_INIT();
  REQUIRE_SESSION(hSession);
  if (!pTemplate && ulCount) return CKR_ARGUMENTS_BAD;
  (void)sync_for_handle(hObject);
  pthread_mutex_lock(&M);
  CK_RV rv = CKR_OK;
  struct session *s = session_get(hSession);
  if (!s) { rv = CKR_SESSION_HANDLE_INVALID; goto out; }
  struct object *o = object_get(hObject);
  if (!o || !visible(o, s)) { rv = CKR_OBJECT_HANDLE_INVALID; goto out; }
  for (CK_ULONG i = 0; i < ulCount; i++) {
    const void *p;
    CK_ULONG n, scratch;
    CK_RV arv = attr_value(o, pTemplate[i].type, &p, &n, &scratch);
    if (arv != CKR_OK) {
      pTemplate[i].ulValueLen = CK_UNAVAILABLE_INFORMATION;
      rv = arv;
    } else if (!pTemplate[i].pValue) {
      pTemplate[i].ulValueLen = n;
    } else if (pTemplate[i].ulValueLen < n) {
      pTemplate[i].ulValueLen = CK_UNAVAILABLE_INFORMATION;
      rv = CKR_BUFFER_TOO_SMALL;
    } else {
      if (n) memcpy(pTemplate[i].pValue, p, n);
      pTemplate[i].ulValueLen = n;
    }
  }
out:
  pthread_mutex_unlock(&M);
  return rv;
}

/* Every attribute type attr_value may answer; the others are CKR_ATTRIBUTE_TYPE_INVALID for every object. */
static const CK_ATTRIBUTE_TYPE ATTRIBUTE_TYPES[] = {
  CKA_CLASS, CKA_TOKEN, CKA_PRIVATE, CKA_MODIFIABLE, CKA_COPYABLE, CKA_DESTROYABLE, CKA_LABEL, CKA_ID, CKA_SUBJECT,
  CKA_START_DATE, CKA_END_DATE, CKA_KEY_TYPE, CKA_DERIVE, CKA_LOCAL, CKA_KEY_GEN_MECHANISM, CKA_ALLOWED_MECHANISMS,
  CKA_MODULUS, CKA_MODULUS_BITS, CKA_PUBLIC_EXPONENT, CKA_SENSITIVE, CKA_ALWAYS_SENSITIVE, CKA_NEVER_EXTRACTABLE,
  CKA_SIGN, CKA_DECRYPT, CKA_SIGN_RECOVER, CKA_UNWRAP, CKA_EXTRACTABLE, CKA_WRAP_WITH_TRUSTED, CKA_ALWAYS_AUTHENTICATE,
  CKA_ENCRYPT, CKA_VERIFY, CKA_VERIFY_RECOVER, CKA_WRAP, CKA_TRUSTED, CKA_CERTIFICATE_TYPE, CKA_CERTIFICATE_CATEGORY,
  CKA_VALUE, CKA_ISSUER, CKA_SERIAL_NUMBER, CKA_URL, CKA_HASH_OF_SUBJECT_PUBLIC_KEY, CKA_HASH_OF_ISSUER_PUBLIC_KEY,
  CKA_JAVA_MIDP_SECURITY_DOMAIN,
};

/* The object's size: the bytes of every attribute value it shows (a private key's secret parts are not among them). */
CK_RV C_GetObjectSize(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE hObject, CK_ULONG_PTR pulSize)
{
  REQUIRE_INIT();
  REQUIRE_SESSION(hSession);
  (void)sync_for_handle(hObject);
  pthread_mutex_lock(&M);
  struct session *s = session_get(hSession);
  struct object *o = s ? object_get(hObject) : NULL;
  CK_RV rv = !s ? CKR_SESSION_HANDLE_INVALID : !o || !visible(o, s) ? CKR_OBJECT_HANDLE_INVALID : !pulSize ? CKR_ARGUMENTS_BAD : CKR_OK;
  if (rv == CKR_OK) {
    CK_ULONG size = 0;
    for (size_t i = 0; i < sizeof ATTRIBUTE_TYPES / sizeof ATTRIBUTE_TYPES[0]; i++) {
      const void *p;
      CK_ULONG n, scratch;
      if (attr_value(o, ATTRIBUTE_TYPES[i], &p, &n, &scratch) == CKR_OK) size += n;
    }
    *pulSize = size;
  }
  pthread_mutex_unlock(&M);
  return rv;
}

static int matches(struct object *o, const CK_ATTRIBUTE *tmpl, CK_ULONG count)
{
  for (CK_ULONG i = 0; i < count; i++) {
    const void *p;
    CK_ULONG n, scratch;
    if (attr_value(o, tmpl[i].type, &p, &n, &scratch) != CKR_OK) return 0;
    if (n != tmpl[i].ulValueLen) return 0;
    if (n && memcmp(p, tmpl[i].pValue, n) != 0) return 0;
  }
  return 1;
}

/*
 * Fills a search's results from the cached list. A renewed token's previous key
 * is found only by its own CKA_ID: a search by label alone gets the current key,
 * while a process still configured with the old key (an httpd child forked
 * before the graceful restart, which re-finds its key by id after fork) gets the
 * one it was configured with. Caller holds M.
 */
static CK_RV collect_matches(struct session *s, CK_ATTRIBUTE_PTR tmpl, CK_ULONG count)
{
  free(s->found);
  const struct slot *sl = &slots[s->slot];
  s->found = sl->nobjects ? calloc(sl->nobjects, sizeof *s->found) : NULL;
  s->nfound = s->found_pos = 0;
  if (sl->nobjects && !s->found) return CKR_HOST_MEMORY;
  int by_id = 0;
  for (CK_ULONG i = 0; i < count; i++) by_id |= tmpl[i].type == CKA_ID;
  for (size_t i = sl->first_object; i < sl->first_object + sl->nobjects; i++)
    if (visible(&objects[i], s) && (!objects[i].retired || by_id) && matches(&objects[i], tmpl, count)) s->found[s->nfound++] = objects[i].handle;
  return CKR_OK;
}

CK_RV C_FindObjectsInit(CK_SESSION_HANDLE hSession, CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulCount)
{
  REQUIRE_INIT();
  REQUIRE_SESSION(hSession);
  if (!pTemplate && ulCount) return CKR_ARGUMENTS_BAD;
  for (CK_ULONG i = 0; i < ulCount; i++)
    if (!pTemplate[i].pValue && pTemplate[i].ulValueLen) return CKR_ATTRIBUTE_VALUE_INVALID;
  /* A renewed key must show up here: engines look for it again on a reload. */
  (void)sync_list(SYNC_PING_IF_QUIET);
  for (int asked = 0;; asked = 1) {
    pthread_mutex_lock(&M);
    struct session *s = session_get(hSession);
    CK_RV rv = !s ? CKR_SESSION_HANDLE_INVALID : s->finding ? CKR_OPERATION_ACTIVE : collect_matches(s, pTemplate, ulCount);
    int none = rv == CKR_OK && s->nfound == 0;
    if (rv == CKR_OK && (!none || asked)) s->finding = 1;
    pthread_mutex_unlock(&M);
    if (rv != CKR_OK || !none || asked) return rv;
    /*
     * Nothing matched. The list counts as current within SYNC_INTERVAL_MS of the
     * last reply, but a key renewed just after that reply is not in it: httpd's
     * graceful restart for a second renewal 10 ms after the first looked for the
     * new key's CKA_ID then, was told there was none, and exited. So a search
     * that finds nothing asks the enclave before it answers.
     */
    (void)sync_list(SYNC_PING_NOW);
  }
}

CK_RV C_FindObjects(CK_SESSION_HANDLE hSession, CK_OBJECT_HANDLE_PTR phObject, CK_ULONG ulMaxObjectCount, CK_ULONG_PTR pulObjectCount)
{
  REQUIRE_INIT();
  REQUIRE_SESSION(hSession);
  if (!pulObjectCount || (!phObject && ulMaxObjectCount)) return CKR_ARGUMENTS_BAD;
  pthread_mutex_lock(&M);
  struct session *s = session_get(hSession);
  CK_RV rv = CKR_OK;
  if (!s) rv = CKR_SESSION_HANDLE_INVALID;
  else if (!s->finding) rv = CKR_OPERATION_NOT_INITIALIZED;
  else {
    CK_ULONG n = 0;
    while (n < ulMaxObjectCount && s->found_pos < s->nfound) phObject[n++] = s->found[s->found_pos++];
    *pulObjectCount = n;
  }
  pthread_mutex_unlock(&M);
  return rv;
}

CK_RV C_FindObjectsFinal(CK_SESSION_HANDLE hSession)
{
  REQUIRE_INIT();
  pthread_mutex_lock(&M);
  struct session *s = session_get(hSession);
  CK_RV rv = CKR_OK;
  if (!s) rv = CKR_SESSION_HANDLE_INVALID;
  else if (!s->finding) rv = CKR_OPERATION_NOT_INITIALIZED;
  else {
    s->finding = 0;
    free(s->found);
    s->found = NULL;
    s->nfound = s->found_pos = 0;
  }
  pthread_mutex_unlock(&M);
  return rv;
}

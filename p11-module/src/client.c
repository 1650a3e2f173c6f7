/*
 * Round trips to the enclave: one call, the token list's freshness, LOGIN, and
 * the private-key operation with its retry and re-login. Called without M.
 */
#include "module.h"

/*
 * One request/response round trip. On CKR_OK, *resp points into *reply_out (free it).
 * Returns the transport status as CK_RV; the enclave's own CK_RV is in resp->rv.
 */
CK_RV call(kw_buf *req, uint32_t id, kw_response *resp, uint8_t **reply_out)
{
  uint8_t *reply = NULL;
  size_t len = 0;
  kw_end_frame(req);
  conn_status st = conn_call(req, id, &reply, &len);
  if (st != CONN_OK) return rv_for(st);
  if (kw_parse_response(reply, len, resp) != 0 || resp->id != id) {
    free(reply);
    return CKR_DEVICE_ERROR;
  }
  pthread_mutex_lock(&M);
  saw_generation(resp->generation);
  pthread_mutex_unlock(&M);
  *reply_out = reply;
  return CKR_OK;
}

/*
 * Brings the cache up to date: LIST when it is known to be stale, else (as
 * `check` says) a PING to learn the generation. Called without M. If the
 * enclave cannot be reached, the last list stays in place.
 */
CK_RV sync_list(enum sync_check check)
{
  pthread_mutex_lock(&M);
  int need_list = !have_list || list_dirty;
  int need_ping = !need_list && (check == SYNC_PING_NOW || (check == SYNC_PING_IF_QUIET && ms_since(&last_contact) > SYNC_INTERVAL_MS));
  pthread_mutex_unlock(&M);
  kw_buf req = { 0 };
  kw_response resp;
  uint8_t *reply = NULL;
  CK_RV rv = CKR_OK;
  if (need_ping) {
    uint32_t id = conn_next_id();
    kw_encode_ping(&req, id);
    rv = call(&req, id, &resp, &reply);
    free(reply);
    reply = NULL;
    if (rv != CKR_OK) goto out;
    pthread_mutex_lock(&M);
    need_list = list_dirty;
    pthread_mutex_unlock(&M);
  }
  if (need_list) {
    uint32_t id = conn_next_id();
    kw_encode_list(&req, id);
    rv = call(&req, id, &resp, &reply);
    if (rv != CKR_OK) goto out;
    kw_token_list fresh;
    int parsed = resp.rv == CKR_OK ? kw_parse_token_list(resp.body, resp.body_len, &fresh) : KW_LIST_MALFORMED;
    if (parsed != 0) {
      if (parsed == KW_LIST_OVER_CAP)
        nacm_log("nitro-acm-p11: the enclave sent a token list over the module's caps (%u tokens, %u keys a token, %u certificates a key, %u objects); keeping the last one",
                 KW_MAX_TOKENS, KW_MAX_KEYS_PER_TOKEN, KW_MAX_CERTS_PER_KEY, KW_MAX_OBJECTS);
      else nacm_log("nitro-acm-p11: the enclave sent an unusable token list");
      rv = CKR_DEVICE_ERROR;
      goto out;
    }
    pthread_mutex_lock(&M);
    apply_list(&fresh, resp.generation);
    pthread_mutex_unlock(&M);
  }
out:
  free(reply);
  kw_buf_free(&req);
  return rv;
}

/*
 * Before a key or object handle is used: fill a stale cache, and if the handle
 * is unknown or its token absent, ask the enclave whether its list changed (at
 * most every SYNC_INTERVAL_MS): after an enclave restart the module may have
 * listed the tokens before the agent provisioned them again, and a web server
 * signing with a handle it already has sends nothing else that would tell it.
 * Called without M.
 */

CK_RV sync_for_handle(CK_OBJECT_HANDLE h)
{
  pthread_mutex_lock(&M);
  int stale = !have_list || list_dirty;
  int missing = 0;
  if (!stale) {
    struct object *o = object_get(h);
    missing = !o || !slots[o->slot].present;
  }
  pthread_mutex_unlock(&M);
  return stale || missing ? sync_list(missing ? SYNC_PING_IF_QUIET : SYNC_IF_STALE) : CKR_OK;
}


/*
 * Before a slot's token is looked at: fill a stale cache, and if the slot's
 * token is absent, ask the enclave whether its list changed (at most every
 * SYNC_INTERVAL_MS). A process that listed the tokens while the enclave held
 * none (a web-server worker forked while the agent provisions a new enclave)
 * sends nothing else that would tell it they are back: pkcs11-provider asks
 * C_GetTokenInfo first, and without this would be told "no token" for the
 * worker's whole life. Called without M.
 */
CK_RV sync_for_slot(CK_SLOT_ID id)
{
  pthread_mutex_lock(&M);
  int stale = !have_list || list_dirty;
  int absent = !stale && id >= 1 && id <= nslots && !slots[id - 1].present;
  pthread_mutex_unlock(&M);
  return stale || absent ? sync_list(absent ? SYNC_PING_IF_QUIET : SYNC_IF_STALE) : CKR_OK;
}

/* Sends LOGIN for a slot's label; `rv_out` gets the enclave's answer. Called without M. */
CK_RV send_login(const char *label, const uint8_t *pin, size_t pin_len, CK_RV *rv_out)
{
  kw_buf req = { 0 };
  uint32_t id = conn_next_id();
  kw_encode_login(&req, id, label, pin, pin_len);
  kw_response resp;
  uint8_t *reply = NULL;
  CK_RV rv = call(&req, id, &resp, &reply);
  if (rv == CKR_OK) *rv_out = resp.rv;
  OPENSSL_cleanse(req.p, req.cap);
  kw_buf_free(&req);
  free(reply);
  return rv;
}

/* What a private-key operation needs from the cache, copied out under M so the round trip runs without it. */
struct op_key {
  uint32_t key_id;
  size_t slot_index;
  char slot_label[KW_MAX_TOKEN_LABEL + 1];
  uint8_t pin[KW_MAX_PIN];
  size_t pin_len;
};

/* private_op's part under M, with one exit path: the key's id and its token's label and PIN. */
static CK_RV take_op_key(CK_OBJECT_HANDLE hKey, struct op_key *k)
{
  pthread_mutex_lock(&M);
  CK_RV rv = CKR_OK;
  struct object *o = object_get(hKey);
  if (!o || !slots[o->slot].present) {
    nacm_debug("sign/decrypt: key %lu invalid (%s)", (unsigned long)hKey, !o ? "no such object" : "token absent");
    rv = CKR_KEY_HANDLE_INVALID;
    goto out;
  }
  struct slot *sl = &slots[o->slot];
  if (!sl->logged_in) { rv = CKR_USER_NOT_LOGGED_IN; goto out; }
  k->key_id = o->key->key_id;
  k->slot_index = o->slot;
  memcpy(k->slot_label, sl->label, sizeof k->slot_label);
  memcpy(k->pin, sl->pin, sizeof k->pin);
  k->pin_len = sl->pin_len;
out:
  pthread_mutex_unlock(&M);
  return rv;
}

/*
 * Runs the private-key operation in the enclave. Handles the cases a restart of
 * the enclave or a fork leaves behind: a connection not logged in yet (log in
 * again with the PIN the application gave) and key ids that changed (refetch
 * the list and find the same key again). Called without M.
 */
CK_RV private_op(CK_OBJECT_HANDLE hKey, uint8_t op, uint8_t scheme, uint8_t hash, uint8_t mgf, uint32_t salt,
                        const uint8_t *label, size_t label_len, const uint8_t *in, size_t in_len, uint8_t *out, size_t *out_len)
{
  for (int attempt = 0; attempt < 3; attempt++) {
    CK_RV srv = sync_for_handle(hKey);
    if (srv != CKR_OK) { nacm_debug("sign/decrypt: cannot refresh the token list (0x%lx)", (unsigned long)srv); return srv; }
    struct op_key k;
    srv = take_op_key(hKey, &k);
    if (srv != CKR_OK) return srv;
    uint32_t key_id = k.key_id;
    size_t slot_index = k.slot_index;
    size_t pin_len = k.pin_len;

    kw_buf req = { 0 };
    uint32_t id = conn_next_id();
    const kw_private_op body = { .key_id = key_id, .scheme = scheme, .hash = hash, .mgf_hash = mgf, .salt_len = salt, .oaep_label = label, .oaep_label_len = label_len, .data = in, .data_len = in_len };
    if (op == KW_SIGN) kw_encode_sign(&req, id, &body);
    else kw_encode_decrypt(&req, id, &body);
    kw_response resp;
    uint8_t *reply = NULL;
    CK_RV rv = call(&req, id, &resp, &reply);
    kw_buf_free(&req);
    if (rv != CKR_OK) { OPENSSL_cleanse(k.pin, sizeof k.pin); return rv; }
    CK_RV answer = resp.rv;
    if (answer == CKR_OK) {
      if (resp.body_len > *out_len) rv = CKR_DEVICE_ERROR; /* more than the modulus: never from a sane enclave */
      else {
        memcpy(out, resp.body, resp.body_len);
        *out_len = resp.body_len;
      }
      free(reply);
      OPENSSL_cleanse(k.pin, sizeof k.pin);
      return rv;
    }
    free(reply);
    if (answer == CKR_USER_NOT_LOGGED_IN && pin_len) {
      /* New connection (fork, enclave restart): log in again by ourselves. */
      CK_RV login_answer = CKR_DEVICE_ERROR;
      rv = send_login(k.slot_label, k.pin, pin_len, &login_answer);
      OPENSSL_cleanse(k.pin, sizeof k.pin);
      if (rv != CKR_OK) return rv;
      if (login_answer == CKR_PIN_INCORRECT) {
        pthread_mutex_lock(&M);
        if (slot_index < nslots) { logout_slot(slot_index); slots[slot_index].has_accepted_pin = 0; }
        pthread_mutex_unlock(&M);
        nacm_log("nitro-acm-p11: token %s no longer accepts the PIN; logged out", k.slot_label);
        return CKR_USER_NOT_LOGGED_IN;
      }
      if (login_answer != CKR_OK) return CKR_DEVICE_ERROR;
      continue;
    }
    OPENSSL_cleanse(k.pin, sizeof k.pin);
    nacm_debug("sign/decrypt: the enclave answered 0x%lx for key %lu (attempt %d)", (unsigned long)answer, (unsigned long)hKey, attempt + 1);
    if (answer == CKR_KEY_HANDLE_INVALID) {
      pthread_mutex_lock(&M);
      list_dirty = 1;
      pthread_mutex_unlock(&M);
      continue;
    }
    return answer;
  }
  return CKR_DEVICE_ERROR;
}

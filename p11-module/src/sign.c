/* Private-key operations: mechanisms, digests and DigestInfo, C_Sign* and C_Decrypt*. */
#include "module.h"

/* ---------- private-key operations ---------- */

static int hash_from_ckm(CK_MECHANISM_TYPE h, uint8_t *out)
{
  switch (h) {
  case CKM_SHA_1: *out = KW_SHA1; return 0;
  case CKM_SHA224: *out = KW_SHA224; return 0;
  case CKM_SHA256: *out = KW_SHA256; return 0;
  case CKM_SHA384: *out = KW_SHA384; return 0;
  case CKM_SHA512: *out = KW_SHA512; return 0;
  default: return -1;
  }
}

static int hash_from_mgf(CK_RSA_PKCS_MGF_TYPE m, uint8_t *out)
{
  switch (m) {
  case CKG_MGF1_SHA1: *out = KW_SHA1; return 0;
  case CKG_MGF1_SHA224: *out = KW_SHA224; return 0;
  case CKG_MGF1_SHA256: *out = KW_SHA256; return 0;
  case CKG_MGF1_SHA384: *out = KW_SHA384; return 0;
  case CKG_MGF1_SHA512: *out = KW_SHA512; return 0;
  default: return -1;
  }
}

static const EVP_MD *evp_for(uint8_t h)
{
  switch (h) {
  case KW_SHA1: return EVP_sha1();
  case KW_SHA224: return EVP_sha224();
  case KW_SHA256: return EVP_sha256();
  case KW_SHA384: return EVP_sha384();
  case KW_SHA512: return EVP_sha512();
  default: return NULL;
  }
}

/* DER DigestInfo prefixes (RFC 8017 9.2 note 1) for the hash-and-sign PKCS#1 v1.5 mechanisms. */
static const uint8_t DI_SHA256[] = { 0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20 };
static const uint8_t DI_SHA384[] = { 0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02, 0x05, 0x00, 0x04, 0x30 };
static const uint8_t DI_SHA512[] = { 0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03, 0x05, 0x00, 0x04, 0x40 };

static CK_RV op_init(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey, enum op_kind kind)
{
  REQUIRE_INIT();
  REQUIRE_SESSION(hSession);
  if (!pMechanism) return CKR_ARGUMENTS_BAD;
  (void)sync_for_handle(hKey);
  pthread_mutex_lock(&M);
  struct session *s = session_get(hSession);
  CK_RV rv = CKR_OK;
  if (!s) { rv = CKR_SESSION_HANDLE_INVALID; goto out; }
  if (s->op != OP_NONE) { rv = CKR_OPERATION_ACTIVE; goto out; }
  struct object *o = object_get(hKey);
  if (!o || o->slot != s->slot || !slots[o->slot].present) {
    nacm_debug("init: key %lu invalid (%s; %zu objects, list %s)", (unsigned long)hKey, !o ? "no such object" : o->slot != s->slot ? "another slot" : "token absent", nobjects, have_list ? (list_dirty ? "stale" : "fresh") : "none");
    rv = CKR_KEY_HANDLE_INVALID;
    goto out;
  }
  if (o->cls != CKO_PRIVATE_KEY) { rv = CKR_KEY_TYPE_INCONSISTENT; goto out; }
  if (!slots[s->slot].logged_in) { rv = CKR_USER_NOT_LOGGED_IN; goto out; }
  CK_MECHANISM_TYPE m = pMechanism->mechanism;
  /* A mechanism of the other key type: RSA mechanisms come first in MECHS, EC ones after. */
  int ec_key = o->key->key_type == KW_KEY_EC, rsa_mech = 0, ec_mech = 0;
  for (size_t i = 0; i < NMECHS; i++) if (MECHS[i] == m) { if (i < NRSA_MECHS) rsa_mech = 1; else ec_mech = 1; }
  if ((ec_key && rsa_mech) || (!ec_key && ec_mech)) { rv = CKR_KEY_TYPE_INCONSISTENT; goto out; }
  uint8_t scheme = 0, hash = 0, mgf = 0;
  uint32_t salt = 0;
  const EVP_MD *md = NULL;
  if (kind == OP_SIGN) {
    switch (m) {
    case CKM_RSA_PKCS: scheme = KW_SIGN_PKCS1; break;
    case CKM_RSA_X_509: scheme = KW_SIGN_RAW; break;
    case CKM_SHA256_RSA_PKCS: scheme = KW_SIGN_PKCS1; hash = KW_SHA256; break;
    case CKM_SHA384_RSA_PKCS: scheme = KW_SIGN_PKCS1; hash = KW_SHA384; break;
    case CKM_SHA512_RSA_PKCS: scheme = KW_SIGN_PKCS1; hash = KW_SHA512; break;
    case CKM_RSA_PKCS_PSS: case CKM_SHA256_RSA_PKCS_PSS: case CKM_SHA384_RSA_PKCS_PSS: case CKM_SHA512_RSA_PKCS_PSS: {
      scheme = KW_SIGN_PSS;
      const CK_RSA_PKCS_PSS_PARAMS *pp = pMechanism->pParameter;
      if (!pp || pMechanism->ulParameterLen != sizeof *pp) { rv = CKR_MECHANISM_PARAM_INVALID; goto out; }
      if (hash_from_ckm(pp->hashAlg, &hash) || hash_from_mgf(pp->mgf, &mgf) || pp->sLen > 1024) { rv = CKR_MECHANISM_PARAM_INVALID; goto out; }
      CK_MECHANISM_TYPE want = m == CKM_SHA256_RSA_PKCS_PSS ? CKM_SHA256 : m == CKM_SHA384_RSA_PKCS_PSS ? CKM_SHA384 : m == CKM_SHA512_RSA_PKCS_PSS ? CKM_SHA512 : pp->hashAlg;
      if (pp->hashAlg != want) { rv = CKR_MECHANISM_PARAM_INVALID; goto out; }
      salt = (uint32_t)pp->sLen;
      break;
    }
    case CKM_ECDSA: scheme = KW_SIGN_ECDSA; break;
    case CKM_ECDSA_SHA256: scheme = KW_SIGN_ECDSA; hash = KW_SHA256; break;
    case CKM_ECDSA_SHA384: scheme = KW_SIGN_ECDSA; hash = KW_SHA384; break;
    case CKM_ECDSA_SHA512: scheme = KW_SIGN_ECDSA; hash = KW_SHA512; break;
    default: rv = CKR_MECHANISM_INVALID; goto out;
    }
    if (m != CKM_RSA_PKCS && m != CKM_RSA_X_509 && m != CKM_RSA_PKCS_PSS && m != CKM_ECDSA) md = evp_for(hash);
  } else {
    switch (m) {
    case CKM_RSA_PKCS: scheme = KW_DEC_PKCS1; break;
    case CKM_RSA_X_509: scheme = KW_DEC_RAW; break;
    case CKM_RSA_PKCS_OAEP: {
      scheme = KW_DEC_OAEP;
      const CK_RSA_PKCS_OAEP_PARAMS *pp = pMechanism->pParameter;
      if (!pp || pMechanism->ulParameterLen != sizeof *pp) { rv = CKR_MECHANISM_PARAM_INVALID; goto out; }
      if (hash_from_ckm(pp->hashAlg, &hash) || hash_from_mgf(pp->mgf, &mgf)) { rv = CKR_MECHANISM_PARAM_INVALID; goto out; }
      if (pp->source != 0 && pp->source != CKZ_DATA_SPECIFIED) { rv = CKR_MECHANISM_PARAM_INVALID; goto out; }
      /* Longer labels than a request can carry are refused here, never dropped later. */
      if (pp->ulSourceDataLen > KW_MAX_OAEP_LABEL || (pp->ulSourceDataLen && !pp->pSourceData)) { rv = CKR_MECHANISM_PARAM_INVALID; goto out; }
      if (pp->ulSourceDataLen) {
        s->oaep_label = malloc(pp->ulSourceDataLen);
        if (!s->oaep_label) { rv = CKR_HOST_MEMORY; goto out; }
        memcpy(s->oaep_label, pp->pSourceData, pp->ulSourceDataLen);
        s->oaep_label_len = pp->ulSourceDataLen;
      }
      break;
    }
    default: rv = CKR_MECHANISM_INVALID; goto out;
    }
  }
  if (md) {
    s->md = EVP_MD_CTX_new();
    if (!s->md || !EVP_DigestInit_ex(s->md, md, NULL)) { op_reset(s); rv = CKR_HOST_MEMORY; goto out; }
  }
  s->op = kind;
  s->mech = m;
  s->key = hKey;
  s->scheme = scheme;
  s->hash = hash;
  s->mgf_hash = mgf;
  s->salt_len = salt;
  s->acc_len = 0;
out:
  pthread_mutex_unlock(&M);
  return rv;
}

/* Caller holds M. The signature's length for the session's key (RSA: the modulus's; EC: r||s), or 0. */
static size_t key_bytes(const struct session *s)
{
  struct object *o = object_get(s->key);
  if (!o) return 0;
  return o->key->key_type == KW_KEY_EC ? 2 * ec_field_bytes(o->key) : o->key->modulus_len;
}

CK_RV C_SignInit(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey)
{
  return op_init(hSession, pMechanism, hKey, OP_SIGN);
}

/* Turns the collected input into what goes to the enclave. Caller holds M; ends nothing. */
static CK_RV sign_input(struct session *s, const uint8_t *data, size_t len, uint8_t *buf, size_t *buf_len)
{
  if (s->md) {
    uint8_t digest[EVP_MAX_MD_SIZE];
    unsigned dlen = 0;
    if ((data && len && !EVP_DigestUpdate(s->md, data, len)) || !EVP_DigestFinal_ex(s->md, digest, &dlen)) return CKR_GENERAL_ERROR;
    size_t n = 0;
    if (s->scheme == KW_SIGN_PKCS1) {
      const uint8_t *di = s->hash == KW_SHA256 ? DI_SHA256 : s->hash == KW_SHA384 ? DI_SHA384 : DI_SHA512;
      memcpy(buf, di, sizeof DI_SHA256);
      n = sizeof DI_SHA256;
    }
    memcpy(buf + n, digest, dlen);
    *buf_len = n + dlen;
    return CKR_OK;
  }
  if (len > MAX_SIGN_INPUT - s->acc_len || s->acc_overflow) return CKR_DATA_LEN_RANGE;
  memcpy(buf, s->acc, s->acc_len);
  if (len) memcpy(buf + s->acc_len, data, len);
  *buf_len = s->acc_len + len;
  if (s->scheme == KW_SIGN_PSS) {
    const EVP_MD *md = evp_for(s->hash);
    if ((size_t)EVP_MD_get_size(md) != *buf_len) return CKR_DATA_LEN_RANGE;
  }
  return CKR_OK;
}

/* A private-key operation taken out of its session under M: the key, its parameters and the input. */
struct private_job {
  CK_OBJECT_HANDLE key;
  uint8_t scheme, hash, mgf;
  uint32_t salt;
  uint8_t input[MAX_SIGN_INPUT + 64]; /* sign: the hash or raw input; decrypt: unused (the caller's buffer is sent) */
  size_t input_len;
  uint8_t *label; /* decrypt: a copy of the OAEP label (another thread may end the operation meanwhile) */
  size_t label_len;
};

/*
 * The checks and the hand-over of C_Sign/C_SignFinal under M, with one exit
 * path; *ready is set when the job is to be sent (not for a size query or an
 * error). `data` is the last part (NULL for Final).
 */
static CK_RV take_sign_job(CK_SESSION_HANDLE hSession, const uint8_t *data, size_t len, CK_BYTE_PTR pSignature, CK_ULONG_PTR pulSignatureLen, struct private_job *job, int *ready)
{
  *ready = 0;
  pthread_mutex_lock(&M);
  CK_RV rv = CKR_OK;
  struct session *s = session_get(hSession);
  if (!s) { rv = CKR_SESSION_HANDLE_INVALID; goto out; }
  if (s->op != OP_SIGN) { rv = CKR_OPERATION_NOT_INITIALIZED; goto out; }
  size_t k = key_bytes(s);
  if (!k) { op_reset(s); rv = CKR_KEY_HANDLE_INVALID; goto out; }
  if (!pSignature) { *pulSignatureLen = k; goto out; }
  if (*pulSignatureLen < k) { *pulSignatureLen = k; rv = CKR_BUFFER_TOO_SMALL; goto out; }
  rv = sign_input(s, data, len, job->input, &job->input_len);
  job->key = s->key;
  job->scheme = s->scheme, job->hash = s->hash, job->mgf = s->mgf_hash;
  job->salt = s->salt_len;
  op_reset(s);
  *ready = rv == CKR_OK;
out:
  pthread_mutex_unlock(&M);
  return rv;
}

/* Shared by C_Sign and C_SignFinal: `data` is the last part (NULL for Final). */
static CK_RV sign_finish(CK_SESSION_HANDLE hSession, const uint8_t *data, size_t len, CK_BYTE_PTR pSignature, CK_ULONG_PTR pulSignatureLen, int single)
{
  REQUIRE_INIT();
  REQUIRE_SESSION(hSession);
  if (!pulSignatureLen || (single && !data && len)) return CKR_ARGUMENTS_BAD;
  struct private_job job = { 0 };
  int ready;
  CK_RV rv = take_sign_job(hSession, data, len, pSignature, pulSignatureLen, &job, &ready);
  if (!ready) return rv;
  size_t out_len = *pulSignatureLen;
  rv = private_op(job.key, KW_SIGN, job.scheme, job.hash, job.mgf, job.salt, NULL, 0, job.input, job.input_len, pSignature, &out_len);
  if (rv == CKR_OK) *pulSignatureLen = out_len;
  return rv;
}

CK_RV C_Sign(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pData, CK_ULONG ulDataLen, CK_BYTE_PTR pSignature, CK_ULONG_PTR pulSignatureLen)
{
  return sign_finish(hSession, pData, ulDataLen, pSignature, pulSignatureLen, 1);
}

CK_RV C_SignUpdate(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pPart, CK_ULONG ulPartLen)
{
  REQUIRE_INIT();
  REQUIRE_SESSION(hSession);
  if (!pPart && ulPartLen) return CKR_ARGUMENTS_BAD;
  pthread_mutex_lock(&M);
  struct session *s = session_get(hSession);
  CK_RV rv = CKR_OK;
  if (!s) rv = CKR_SESSION_HANDLE_INVALID;
  else if (s->op != OP_SIGN) rv = CKR_OPERATION_NOT_INITIALIZED;
  else if (s->md) {
    if (ulPartLen && !EVP_DigestUpdate(s->md, pPart, ulPartLen)) { op_reset(s); rv = CKR_GENERAL_ERROR; }
  } else if (ulPartLen > sizeof s->acc - s->acc_len) {
    s->acc_overflow = 1; /* reported by SignFinal as CKR_DATA_LEN_RANGE */
  } else if (ulPartLen) {
    memcpy(s->acc + s->acc_len, pPart, ulPartLen);
    s->acc_len += ulPartLen;
  }
  pthread_mutex_unlock(&M);
  return rv;
}

CK_RV C_SignFinal(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pSignature, CK_ULONG_PTR pulSignatureLen)
{
  return sign_finish(hSession, NULL, 0, pSignature, pulSignatureLen, 0);
}

CK_RV C_DecryptInit(CK_SESSION_HANDLE hSession, CK_MECHANISM_PTR pMechanism, CK_OBJECT_HANDLE hKey)
{
  return op_init(hSession, pMechanism, hKey, OP_DECRYPT);
}

/* The checks and the hand-over of C_Decrypt under M, with one exit path; *ready as for take_sign_job. */
static CK_RV take_decrypt_job(CK_SESSION_HANDLE hSession, CK_ULONG in_len, CK_BYTE_PTR pData, CK_ULONG_PTR pulDataLen, struct private_job *job, int *ready)
{
  *ready = 0;
  pthread_mutex_lock(&M);
  CK_RV rv = CKR_OK;
  struct session *s = session_get(hSession);
  if (!s) { rv = CKR_SESSION_HANDLE_INVALID; goto out; }
  if (s->op != OP_DECRYPT) { rv = CKR_OPERATION_NOT_INITIALIZED; goto out; }
  size_t k = key_bytes(s);
  if (!k) { op_reset(s); rv = CKR_KEY_HANDLE_INVALID; goto out; }
  if (in_len != k) { op_reset(s); rv = CKR_ENCRYPTED_DATA_LEN_RANGE; goto out; }
  if (!pData) { *pulDataLen = k; goto out; }
  job->key = s->key;
  job->scheme = s->scheme, job->hash = s->hash, job->mgf = s->mgf_hash;
  job->label_len = s->oaep_label_len;
  if (job->label_len) {
    job->label = malloc(job->label_len);
    if (!job->label) { rv = CKR_HOST_MEMORY; goto out; }
    memcpy(job->label, s->oaep_label, job->label_len);
  }
  *ready = 1;
out:
  pthread_mutex_unlock(&M);
  return rv;
}

CK_RV C_Decrypt(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pEncryptedData, CK_ULONG ulEncryptedDataLen, CK_BYTE_PTR pData, CK_ULONG_PTR pulDataLen)
{
  REQUIRE_INIT();
  REQUIRE_SESSION(hSession);
  if (!pulDataLen || (!pEncryptedData && ulEncryptedDataLen)) return CKR_ARGUMENTS_BAD;
  struct private_job job = { 0 };
  int ready;
  CK_RV rv = take_decrypt_job(hSession, ulEncryptedDataLen, pData, pulDataLen, &job, &ready);
  if (!ready) return rv;

  uint8_t out[MAX_SIGN_INPUT];
  size_t out_len = sizeof out;
  rv = private_op(job.key, KW_DECRYPT, job.scheme, job.hash, job.mgf, 0, job.label, job.label_len, pEncryptedData, ulEncryptedDataLen, out, &out_len);
  free(job.label);
  pthread_mutex_lock(&M);
  struct session *s = session_get(hSession);
  if (rv == CKR_OK && *pulDataLen < out_len) {
    /* The operation stays active so the caller can retry with a bigger buffer. */
    *pulDataLen = out_len;
    rv = CKR_BUFFER_TOO_SMALL;
  } else {
    if (rv == CKR_OK) {
      memcpy(pData, out, out_len);
      *pulDataLen = out_len;
    }
    if (s) op_reset(s);
  }
  pthread_mutex_unlock(&M);
  OPENSSL_cleanse(out, sizeof out);
  return rv;
}

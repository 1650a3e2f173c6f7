/*
 * Calls the module the way C applications do, including the corners bindings
 * hide: NULL arguments, short buffers, malformed templates, threads signing at
 * once over one connection, and fork() after login (nginx master -> workers).
 * Usage: api_test MODULE.so TOKEN_LABEL PIN   (the enclave address comes from
 * NITRO_ACM_KEY_ADDRESS). Prints one line per check and "N passed, M failed".
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <openssl/bn.h>
#include <openssl/evp.h>
#include <openssl/ec.h>
#include <openssl/rsa.h>
#include <openssl/core_names.h>
#include <openssl/param_build.h>

#include <p11-kit/pkcs11.h>

static CK_FUNCTION_LIST *f;
static int passed, failed;
static const char *label, *pin;
static EVP_PKEY *pub;

#define CHECK(cond, ...) do { if (cond) { passed++; } else { failed++; printf("FAIL %s:%d: ", __FILE__, __LINE__); printf(__VA_ARGS__); printf("\n"); } } while (0)
#define RV(call, want) do { CK_RV rv_ = (call); CHECK(rv_ == (CK_RV)(want), "%s = 0x%lx, expected 0x%lx", #call, rv_, (CK_RV)(want)); } while (0)

static CK_SLOT_ID find_slot(void)
{
  CK_SLOT_ID slots[64];
  CK_ULONG n = 64;
  if (f->C_GetSlotList(CK_TRUE, slots, &n) != CKR_OK) return (CK_SLOT_ID)-1;
  for (CK_ULONG i = 0; i < n; i++) {
    CK_TOKEN_INFO ti;
    if (f->C_GetTokenInfo(slots[i], &ti) != CKR_OK) continue;
    size_t l = strlen(label);
    if (memcmp(ti.label, label, l) == 0 && (l == 32 || ti.label[l] == ' ')) return slots[i];
  }
  return (CK_SLOT_ID)-1;
}

static CK_OBJECT_HANDLE find_one(CK_SESSION_HANDLE s, CK_OBJECT_CLASS cls)
{
  CK_ATTRIBUTE t = { CKA_CLASS, &cls, sizeof cls };
  CK_OBJECT_HANDLE h = CK_INVALID_HANDLE;
  CK_ULONG n = 0;
  if (f->C_FindObjectsInit(s, &t, 1) != CKR_OK) return h;
  f->C_FindObjects(s, &h, 1, &n);
  f->C_FindObjectsFinal(s);
  return n == 1 ? h : CK_INVALID_HANDLE;
}

/*
 * An EC token (NITRO_ACM_TEST_EC_TOKEN, same PIN): its objects' EC attributes,
 * CKM_ECDSA over a digest and CKM_ECDSA_SHA256 in two parts, each verified with
 * the public key built from CKA_EC_PARAMS (P-256) and CKA_EC_POINT; the size
 * query and a short buffer; RSA mechanisms and decryption refused.
 */
static void ec_checks(const char *ec_label)
{
  const char *saved = label;
  label = ec_label;
  CK_SLOT_ID slot = find_slot();
  label = saved;
  CHECK(slot != (CK_SLOT_ID)-1, "EC token %s found", ec_label);
  if (slot == (CK_SLOT_ID)-1) return;
  CK_SESSION_HANDLE s;
  RV(f->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &s), CKR_OK);
  RV(f->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR)pin, strlen(pin)), CKR_OK);
  CK_OBJECT_HANDLE key = find_one(s, CKO_PRIVATE_KEY), pubh = find_one(s, CKO_PUBLIC_KEY);
  CK_KEY_TYPE kt = 0;
  uint8_t params[32], point[140], modulus[8];
  CK_ATTRIBUTE a[] = { { CKA_KEY_TYPE, &kt, sizeof kt }, { CKA_EC_PARAMS, params, sizeof params } };
  RV(f->C_GetAttributeValue(s, key, a, 2), CKR_OK);
  static const uint8_t P256[] = { 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07 };
  CHECK(kt == CKK_EC && a[1].ulValueLen == sizeof P256 && memcmp(params, P256, sizeof P256) == 0, "EC private key: CKK_EC, CKA_EC_PARAMS is P-256");
  CK_ATTRIBUTE pa[] = { { CKA_EC_POINT, point, sizeof point } };
  RV(f->C_GetAttributeValue(s, pubh, pa, 1), CKR_OK);
  CHECK(pa[0].ulValueLen == 67 && point[0] == 0x04 && point[1] == 65 && point[2] == 0x04, "CKA_EC_POINT: an OCTET STRING of a 65-byte uncompressed point (%lu)", pa[0].ulValueLen);
  CK_ATTRIBUTE none[] = { { CKA_MODULUS, modulus, sizeof modulus } };
  RV(f->C_GetAttributeValue(s, pubh, none, 1), CKR_ATTRIBUTE_TYPE_INVALID);
  CK_ATTRIBUTE nopoint[] = { { CKA_EC_POINT, point, sizeof point } };
  RV(f->C_GetAttributeValue(s, key, nopoint, 1), CKR_ATTRIBUTE_TYPE_INVALID);

  OSSL_PARAM_BLD *b = OSSL_PARAM_BLD_new();
  OSSL_PARAM_BLD_push_utf8_string(b, OSSL_PKEY_PARAM_GROUP_NAME, "prime256v1", 0);
  OSSL_PARAM_BLD_push_octet_string(b, OSSL_PKEY_PARAM_PUB_KEY, point + 2, 65);
  OSSL_PARAM *op = OSSL_PARAM_BLD_to_param(b);
  EVP_PKEY_CTX *fc = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL);
  EVP_PKEY *ecpub = NULL;
  CHECK(fc && EVP_PKEY_fromdata_init(fc) == 1 && EVP_PKEY_fromdata(fc, &ecpub, EVP_PKEY_PUBLIC_KEY, op) == 1, "EC public key from CKA_EC_POINT");
  EVP_PKEY_CTX_free(fc);
  OSSL_PARAM_free(op);
  OSSL_PARAM_BLD_free(b);

  uint8_t data[100], digest[32], sig[96], der[80];
  for (size_t i = 0; i < sizeof data; i++) data[i] = (uint8_t)(i * 7);
  unsigned dlen = 0;
  EVP_Digest(data, sizeof data, digest, &dlen, EVP_sha256(), NULL);
  CK_MECHANISM ecdsa = { CKM_ECDSA, NULL, 0 }, ecdsa256 = { CKM_ECDSA_SHA256, NULL, 0 }, rsa = { CKM_RSA_PKCS, NULL, 0 };
  for (int round = 0; round < 2; round++) {
    CK_ULONG n = 0;
    if (round == 0) {
      RV(f->C_SignInit(s, &ecdsa, key), CKR_OK);
      RV(f->C_Sign(s, digest, sizeof digest, NULL, &n), CKR_OK);
      CHECK(n == 64, "ECDSA signature size query: 64 (%lu)", n);
      n = 10;
      RV(f->C_Sign(s, digest, sizeof digest, sig, &n), CKR_BUFFER_TOO_SMALL);
      n = sizeof sig;
      RV(f->C_Sign(s, digest, sizeof digest, sig, &n), CKR_OK);
    } else {
      RV(f->C_SignInit(s, &ecdsa256, key), CKR_OK);
      RV(f->C_SignUpdate(s, data, 40), CKR_OK);
      RV(f->C_SignUpdate(s, data + 40, sizeof data - 40), CKR_OK);
      n = sizeof sig;
      RV(f->C_SignFinal(s, sig, &n), CKR_OK);
    }
    /* r||s to DER for OpenSSL's verify. */
    ECDSA_SIG *es = ECDSA_SIG_new();
    ECDSA_SIG_set0(es, BN_bin2bn(sig, 32, NULL), BN_bin2bn(sig + 32, 32, NULL));
    uint8_t *dp = der;
    int der_len = i2d_ECDSA_SIG(es, &dp);
    ECDSA_SIG_free(es);
    EVP_PKEY_CTX *vc = ecpub ? EVP_PKEY_CTX_new(ecpub, NULL) : NULL;
    CHECK(n == 64 && der_len > 0 && vc && EVP_PKEY_verify_init(vc) == 1 && EVP_PKEY_verify(vc, der, (size_t)der_len, digest, sizeof digest) == 1, "%s signature verifies with the public key object", round ? "CKM_ECDSA_SHA256 (two parts)" : "CKM_ECDSA");
    EVP_PKEY_CTX_free(vc);
  }
  RV(f->C_SignInit(s, &rsa, key), CKR_KEY_TYPE_INCONSISTENT);
  RV(f->C_DecryptInit(s, &rsa, key), CKR_KEY_TYPE_INCONSISTENT);
  EVP_PKEY_free(ecpub);
  RV(f->C_CloseSession(s), CKR_OK);
}

static EVP_PKEY *public_key(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE h)
{
  uint8_t n[1024], e[16];
  CK_ATTRIBUTE t[2] = { { CKA_MODULUS, n, sizeof n }, { CKA_PUBLIC_EXPONENT, e, sizeof e } };
  if (f->C_GetAttributeValue(s, h, t, 2) != CKR_OK) return NULL;
  OSSL_PARAM_BLD *b = OSSL_PARAM_BLD_new();
  BIGNUM *bn = BN_bin2bn(n, (int)t[0].ulValueLen, NULL), *be = BN_bin2bn(e, (int)t[1].ulValueLen, NULL);
  OSSL_PARAM_BLD_push_BN(b, OSSL_PKEY_PARAM_RSA_N, bn);
  OSSL_PARAM_BLD_push_BN(b, OSSL_PKEY_PARAM_RSA_E, be);
  OSSL_PARAM *p = OSSL_PARAM_BLD_to_param(b);
  EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, "RSA", NULL);
  EVP_PKEY *k = NULL;
  EVP_PKEY_fromdata_init(ctx);
  EVP_PKEY_fromdata(ctx, &k, EVP_PKEY_PUBLIC_KEY, p);
  EVP_PKEY_CTX_free(ctx);
  OSSL_PARAM_free(p);
  OSSL_PARAM_BLD_free(b);
  BN_free(bn);
  BN_free(be);
  return k;
}

/* Signs msg with CKM_SHA256_RSA_PKCS and verifies with OpenSSL; 1 if good. */
static int sign_and_verify(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE key, const char *msg)
{
  CK_MECHANISM m = { CKM_SHA256_RSA_PKCS, NULL, 0 };
  uint8_t sig[512];
  CK_ULONG sl = sizeof sig;
  if (f->C_SignInit(s, &m, key) != CKR_OK) return 0;
  if (f->C_Sign(s, (CK_BYTE_PTR)msg, strlen(msg), sig, &sl) != CKR_OK) return 0;
  EVP_MD_CTX *c = EVP_MD_CTX_new();
  int ok = EVP_DigestVerifyInit(c, NULL, EVP_sha256(), NULL, pub) == 1 && EVP_DigestVerify(c, sig, sl, (const uint8_t *)msg, strlen(msg)) == 1;
  EVP_MD_CTX_free(c);
  return ok;
}

struct thread_arg { CK_SLOT_ID slot; int good; };

static void *signer(void *p)
{
  struct thread_arg *a = p;
  CK_SESSION_HANDLE s;
  if (f->C_OpenSession(a->slot, CKF_SERIAL_SESSION, NULL, NULL, &s) != CKR_OK) return NULL;
  CK_OBJECT_HANDLE key = find_one(s, CKO_PRIVATE_KEY);
  for (int i = 0; i < 25; i++) {
    char msg[64];
    snprintf(msg, sizeof msg, "thread %p message %d", (void *)a, i);
    a->good += sign_and_verify(s, key, msg);
  }
  f->C_CloseSession(s);
  return NULL;
}

static CK_RV dummy_mutex(void **m) { (void)m; return CKR_OK; }

/*
 * --hostile: against a fake enclave that answers with malformed replies, keep
 * calling what a web server calls; every call may fail, none may crash or hang.
 */
static int hostile(void)
{
  if (f->C_Initialize(NULL) != CKR_OK) return 1;
  for (int round = 0; round < 40; round++) {
    CK_SLOT_ID slots[8];
    CK_ULONG n = 8;
    if (f->C_GetSlotList(CK_TRUE, slots, &n) != CKR_OK) continue;
    for (CK_ULONG i = 0; i < n && i < 8; i++) {
      CK_TOKEN_INFO ti;
      (void)f->C_GetTokenInfo(slots[i], &ti);
      CK_SESSION_HANDLE s;
      if (f->C_OpenSession(slots[i], CKF_SERIAL_SESSION, NULL, NULL, &s) != CKR_OK) continue;
      (void)f->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR)pin, strlen(pin));
      CK_OBJECT_HANDLE key = find_one(s, CKO_PRIVATE_KEY), cert = find_one(s, CKO_CERTIFICATE);
      uint8_t buf[4096];
      CK_ATTRIBUTE a = { CKA_VALUE, buf, sizeof buf };
      (void)f->C_GetAttributeValue(s, cert, &a, 1);
      CK_MECHANISM m = { CKM_SHA256_RSA_PKCS, NULL, 0 };
      uint8_t sig[512];
      CK_ULONG sl = sizeof sig;
      if (f->C_SignInit(s, &m, key) == CKR_OK) (void)f->C_Sign(s, (CK_BYTE_PTR)"x", 1, sig, &sl);
      f->C_CloseSession(s);
    }
  }
  f->C_Finalize(NULL);
  printf("survived\n");
  return 0;
}

/*
 * --growing: against a fake enclave that adds a token every time it is asked for
 * the list, count the slots, wait past the module's sync interval, then ask for
 * the list: it must be the one just counted (callers such as libp11 do not retry
 * CKR_BUFFER_TOO_SMALL).
 */
static int growing(void)
{
  if (f->C_Initialize(NULL) != CKR_OK) return 1;
  int bad = 0;
  for (int round = 0; round < 20; round++) {
    CK_ULONG n = 0;
    if (f->C_GetSlotList(CK_TRUE, NULL, &n) != CKR_OK) { bad++; continue; }
    CK_SLOT_ID *slots = calloc(n ? n : 1, sizeof *slots);
    struct timespec pause = { 0, 40 * 1000000L };
    nanosleep(&pause, NULL);
    CK_ULONG m = n;
    CK_RV rv = f->C_GetSlotList(CK_TRUE, slots, &m);
    if (rv != CKR_OK || m != n) { printf("round %d: counted %lu slots, then the list call gave 0x%lx with %lu\n", round, n, rv, m); bad++; }
    free(slots);
  }
  f->C_Finalize(NULL);
  printf("%d of 20 count-then-list calls disagreed\n", bad);
  return bad ? 1 : 0;
}

/*
 * --many ROUNDS: against a fake enclave with a large token list (security
 * finding 8, issue 11), list the slots ROUNDS times, past the module's sync
 * interval each time, and look into the last slot: its label and how many
 * certificates it shows. The caller judges the counts and the time taken.
 * Between rounds it logs in to the last slot: a fake enclave can take that as
 * the moment to change its list.
 */
static int many(int rounds)
{
  if (f->C_Initialize(NULL) != CKR_OK) return 1;
  for (int round = 0; round < rounds; round++) {
    struct timespec pause = { 0, 40 * 1000000L }, t0, t1;
    nanosleep(&pause, NULL);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    CK_ULONG n = 0;
    CK_RV rv = f->C_GetSlotList(CK_TRUE, NULL, &n);
    CK_SLOT_ID *ids = calloc(n ? n : 1, sizeof *ids);
    CK_ULONG m = n;
    if (rv == CKR_OK && ids) rv = f->C_GetSlotList(CK_TRUE, ids, &m);
    char last[33] = "-";
    CK_ULONG certs = 0;
    if (rv == CKR_OK && m > 0) {
      CK_TOKEN_INFO ti;
      if (f->C_GetTokenInfo(ids[m - 1], &ti) == CKR_OK) {
        memcpy(last, ti.label, 32);
        for (int i = 31; i >= 0 && last[i] == ' '; i--) last[i] = 0;
      }
      CK_SESSION_HANDLE s;
      if (f->C_OpenSession(ids[m - 1], CKF_SERIAL_SESSION, NULL, NULL, &s) == CKR_OK) {
        CK_OBJECT_CLASS cls = CKO_CERTIFICATE;
        CK_ATTRIBUTE tmpl = { CKA_CLASS, &cls, sizeof cls };
        CK_OBJECT_HANDLE found[64];
        if (f->C_FindObjectsInit(s, &tmpl, 1) == CKR_OK) {
          (void)f->C_FindObjects(s, found, 64, &certs);
          f->C_FindObjectsFinal(s);
        }
        f->C_CloseSession(s);
      }
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    long ms = (t1.tv_sec - t0.tv_sec) * 1000L + (t1.tv_nsec - t0.tv_nsec) / 1000000L;
    printf("round %d: rv 0x%lx, %lu slots, last %s with %lu certificates, %ld ms\n", round, rv, m, last, certs, ms);
    if (rv == CKR_OK && m > 0) {
      CK_SESSION_HANDLE s;
      if (f->C_OpenSession(ids[m - 1], CKF_SERIAL_SESSION, NULL, NULL, &s) == CKR_OK) {
        (void)f->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR)"next-round", 10);
        f->C_CloseSession(s);
      }
    }
    free(ids);
  }
  f->C_Finalize(NULL);
  return 0;
}

/*
 * --renewed ROUNDS: what a web server's master does on each reload (httpd's
 * graceful restart, nginx's HUP): log in, then look for the key its new
 * configuration names by CKA_ID. A fake enclave renews the token's key as it
 * answers each LOGIN, so the search comes within the module's sync interval of
 * its last reply: the new key must be found all the same (two renewals 10 ms
 * apart made httpd exit with "object not found"). In round R the new key's
 * CKA_ID is 20 bytes of R + 2.
 */
static int renewed(int rounds)
{
  if (f->C_Initialize(NULL) != CKR_OK) return 1;
  int missed = 0;
  for (int round = 0; round < rounds; round++) {
    CK_SESSION_HANDLE s;
    if (f->C_OpenSession(1, CKF_SERIAL_SESSION, NULL, NULL, &s) != CKR_OK) { missed++; continue; }
    (void)f->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR)"renew-now", 9);
    CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
    uint8_t id[20];
    memset(id, round + 2, sizeof id);
    CK_ATTRIBUTE tmpl[] = { { CKA_CLASS, &cls, sizeof cls }, { CKA_ID, id, sizeof id } };
    CK_OBJECT_HANDLE found[4];
    CK_ULONG nfound = 0;
    CK_RV rv = f->C_FindObjectsInit(s, tmpl, 2);
    if (rv == CKR_OK) {
      rv = f->C_FindObjects(s, found, 4, &nfound);
      f->C_FindObjectsFinal(s);
    }
    printf("round %d: rv 0x%lx, %lu keys with the new CKA_ID\n", round, rv, nfound);
    if (rv != CKR_OK || nfound != 1) missed++;
    f->C_CloseSession(s);
  }
  f->C_Finalize(NULL);
  return missed ? 1 : 0;
}

int main(int argc, char **argv)
{
  if (argc == 4 && (strcmp(argv[2], "--hostile") == 0 || strcmp(argv[2], "--growing") == 0 || strcmp(argv[2], "--many") == 0 || strcmp(argv[2], "--renewed") == 0)) {
    pin = argv[3];
    void *h = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    CK_C_GetFunctionList gfl = h ? (CK_C_GetFunctionList)dlsym(h, "C_GetFunctionList") : NULL;
    if (!gfl || gfl(&f) != CKR_OK) return 2;
    int rc = strcmp(argv[2], "--hostile") == 0 ? hostile() : strcmp(argv[2], "--many") == 0 ? many(atoi(argv[3])) : strcmp(argv[2], "--renewed") == 0 ? renewed(atoi(argv[3])) : growing();
    dlclose(h);
    return rc;
  }
  if (argc != 4) { fprintf(stderr, "usage: %s MODULE.so TOKEN_LABEL PIN | MODULE.so --hostile PIN | MODULE.so --growing PIN | MODULE.so --many ROUNDS | MODULE.so --renewed ROUNDS\n", argv[0]); return 2; }
  label = argv[2];
  pin = argv[3];
  void *h = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
  if (!h) { fprintf(stderr, "dlopen: %s\n", dlerror()); return 2; }
  CK_C_GetFunctionList gfl = (CK_C_GetFunctionList)dlsym(h, "C_GetFunctionList");
  CHECK(gfl != NULL, "C_GetFunctionList exported");
  RV(gfl(NULL), CKR_ARGUMENTS_BAD);
  RV(gfl(&f), CKR_OK);

  /* Before C_Initialize. */
  CK_ULONG n = 0;
  RV(f->C_GetSlotList(CK_TRUE, NULL, &n), CKR_CRYPTOKI_NOT_INITIALIZED);
  RV(f->C_Finalize(NULL), CKR_CRYPTOKI_NOT_INITIALIZED);
  CK_C_INITIALIZE_ARGS partial = { .CreateMutex = dummy_mutex };
  RV(f->C_Initialize(&partial), CKR_ARGUMENTS_BAD);
  /* Security finding 9 (issue 11): a pReserved that is not p11-kit's init string is an error, never a crash or CKR_OK. */
  CK_C_INITIALIZE_ARGS bad_reserved = { .flags = CKF_OS_LOCKING_OK, .pReserved = (void *)1 };
  RV(f->C_Initialize(&bad_reserved), CKR_ARGUMENTS_BAD);
  static char not_an_address[] = "definitely not an address";
  bad_reserved.pReserved = not_an_address;
  RV(f->C_Initialize(&bad_reserved), CKR_ARGUMENTS_BAD);
  CK_C_INITIALIZE_ARGS os = { .flags = CKF_OS_LOCKING_OK };
  RV(f->C_Initialize(&os), CKR_OK);
  RV(f->C_Initialize(NULL), CKR_CRYPTOKI_ALREADY_INITIALIZED);

  /* Conformance (issue 12, google/pkcs11test): a slot id works before C_GetSlotList (Java's slot=, pkcs11-tool --slot). */
  CK_SLOT_INFO si0;
  CK_TOKEN_INFO ti0;
  CK_MECHANISM_INFO mi0;
  CK_ULONG nm0 = 0;
  RV(f->C_GetSlotInfo(1, &si0), CKR_OK);
  CHECK(si0.flags & CKF_TOKEN_PRESENT, "slot 1 has its token before C_GetSlotList");
  RV(f->C_GetTokenInfo(1, &ti0), CKR_OK);
  RV(f->C_GetMechanismList(1, NULL, &nm0), CKR_OK);
  CHECK(nm0 == 14, "slot 1 lists 14 mechanisms (10 RSA, 4 ECDSA) before C_GetSlotList (%lu)", nm0);
  RV(f->C_GetMechanismInfo(1, CKM_RSA_PKCS, &mi0), CKR_OK);
  RV(f->C_GetSlotInfo(100000, &si0), CKR_SLOT_ID_INVALID);

  /* NULL and short buffers. */
  RV(f->C_GetInfo(NULL), CKR_ARGUMENTS_BAD);
  RV(f->C_GetSlotList(CK_TRUE, NULL, NULL), CKR_ARGUMENTS_BAD);
  RV(f->C_GetSlotList(CK_TRUE, NULL, &n), CKR_OK);
  CHECK(n >= 1, "at least one slot (%lu)", n);
  CK_SLOT_ID one;
  CK_ULONG zero = 0;
  RV(f->C_GetSlotList(CK_TRUE, &one, &zero), CKR_BUFFER_TOO_SMALL);
  CHECK(zero == n, "BUFFER_TOO_SMALL reports the count (%lu)", zero);
  CK_SLOT_ID slot = find_slot();
  CHECK(slot != (CK_SLOT_ID)-1, "token %s found", label);
  RV(f->C_GetTokenInfo(slot, NULL), CKR_ARGUMENTS_BAD);
  CK_MECHANISM_INFO mi;
  RV(f->C_GetMechanismInfo(slot, CKM_SHA256_RSA_PKCS_PSS, &mi), CKR_OK);
  CHECK(mi.ulMinKeySize == 2048 && mi.ulMaxKeySize == 4096 && (mi.flags & CKF_SIGN), "PSS mechanism info");
  RV(f->C_GetMechanismInfo(slot, CKM_ECDSA, &mi), CKR_OK);
  CHECK(mi.ulMinKeySize == 256 && mi.ulMaxKeySize == 384 && (mi.flags & CKF_SIGN) && !(mi.flags & CKF_DECRYPT) && (mi.flags & CKF_EC_NAMEDCURVE), "ECDSA mechanism info: P-256 to P-384, sign only, named curves");
  RV(f->C_GetMechanismInfo(slot, CKM_DSA, &mi), CKR_MECHANISM_INVALID);
  CK_ULONG nm = 1;
  CK_MECHANISM_TYPE mt;
  RV(f->C_GetMechanismList(slot, &mt, &nm), CKR_BUFFER_TOO_SMALL);

  CK_SESSION_HANDLE s;
  RV(f->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, NULL), CKR_ARGUMENTS_BAD);

  /* Conformance: C_Login as v2.40 lists it for a token with no SO PIN, and a PIN of a length no token has is incorrect. */
  CK_SESSION_HANDLE rw;
  RV(f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &rw), CKR_OK);
  RV(f->C_Login(rw, CKU_SO, (CK_UTF8CHAR_PTR)pin, strlen(pin)), CKR_PIN_INCORRECT);
  RV(f->C_Login(rw, 42, (CK_UTF8CHAR_PTR)pin, strlen(pin)), CKR_USER_TYPE_INVALID);
  RV(f->C_Login(rw, CKU_USER, (CK_UTF8CHAR_PTR)"", 0), CKR_PIN_INCORRECT);
  char long_pin[256];
  memset(long_pin, 'x', sizeof long_pin);
  RV(f->C_Login(rw, CKU_USER, (CK_UTF8CHAR_PTR)long_pin, sizeof long_pin), CKR_PIN_INCORRECT);
  RV(f->C_Login(rw, CKU_USER, (CK_UTF8CHAR_PTR)pin, strlen(pin)), CKR_OK);
  RV(f->C_Login(rw, CKU_SO, (CK_UTF8CHAR_PTR)pin, strlen(pin)), CKR_USER_ANOTHER_ALREADY_LOGGED_IN);
  RV(f->C_Logout(rw), CKR_OK);
  RV(f->C_OpenSession(slot, CKF_SERIAL_SESSION, NULL, NULL, &s), CKR_OK);
  RV(f->C_Login(rw, CKU_SO, (CK_UTF8CHAR_PTR)pin, strlen(pin)), CKR_SESSION_READ_ONLY_EXISTS);
  RV(f->C_CloseSession(rw), CKR_OK);
  RV(f->C_Login(s, CKU_SO, (CK_UTF8CHAR_PTR)pin, strlen(pin)), CKR_SESSION_READ_ONLY_EXISTS);

  /* Conformance: a bad session handle is reported before anything else is looked at. */
  const CK_SESSION_HANDLE no_session = 0xbad;
  uint8_t rnd[8];
  RV(f->C_GenerateRandom(no_session, rnd, sizeof rnd), CKR_SESSION_HANDLE_INVALID);
  RV(f->C_SeedRandom(no_session, rnd, sizeof rnd), CKR_SESSION_HANDLE_INVALID);
  RV(f->C_GenerateRandom(s, rnd, sizeof rnd), CKR_RANDOM_NO_RNG);
  RV(f->C_GetSessionInfo(no_session, NULL), CKR_SESSION_HANDLE_INVALID);
  RV(f->C_GetAttributeValue(no_session, 1, NULL, 1), CKR_SESSION_HANDLE_INVALID);
  RV(f->C_FindObjectsInit(no_session, NULL, 1), CKR_SESSION_HANDLE_INVALID);
  RV(f->C_FindObjects(no_session, NULL, 1, NULL), CKR_SESSION_HANDLE_INVALID);
  RV(f->C_SignInit(no_session, NULL, 1), CKR_SESSION_HANDLE_INVALID);
  RV(f->C_Sign(no_session, NULL, 1, NULL, NULL), CKR_SESSION_HANDLE_INVALID);
  RV(f->C_SignUpdate(no_session, NULL, 1), CKR_SESSION_HANDLE_INVALID);
  RV(f->C_Decrypt(no_session, NULL, 1, NULL, NULL), CKR_SESSION_HANDLE_INVALID);
  RV(f->C_GetObjectSize(no_session, 1, NULL), CKR_SESSION_HANDLE_INVALID);
  RV(f->C_GetFunctionStatus(no_session), CKR_SESSION_HANDLE_INVALID);
  RV(f->C_Login(s, CKU_USER, NULL, 8), CKR_ARGUMENTS_BAD);
  RV(f->C_Login(s, CKU_USER, (CK_UTF8CHAR_PTR)pin, strlen(pin)), CKR_OK);

  /* Templates. */
  CK_ATTRIBUTE bad = { CKA_LABEL, NULL, 5 };
  RV(f->C_FindObjectsInit(s, &bad, 1), CKR_ATTRIBUTE_VALUE_INVALID);
  RV(f->C_FindObjectsInit(s, NULL, 1), CKR_ARGUMENTS_BAD);
  RV(f->C_FindObjects(s, NULL, 0, &n), CKR_OPERATION_NOT_INITIALIZED);
  CK_OBJECT_HANDLE key = find_one(s, CKO_PRIVATE_KEY), pubh = find_one(s, CKO_PUBLIC_KEY);
  CHECK(key != CK_INVALID_HANDLE && pubh != CK_INVALID_HANDLE, "key pair found");
  uint8_t small[4];
  CK_BBOOL sens = 0;
  CK_ATTRIBUTE mix[3] = { { CKA_SENSITIVE, &sens, sizeof sens }, { 0x7ffffff0UL, small, sizeof small }, { CKA_ID, small, sizeof small } };
  /* With two different problems in one template, PKCS#11 lets the module return either. */
  CK_RV mrv = f->C_GetAttributeValue(s, key, mix, 3);
  CHECK(mrv == CKR_ATTRIBUTE_TYPE_INVALID || mrv == CKR_BUFFER_TOO_SMALL, "mixed template gives 0x%lx", mrv);
  CHECK(sens == CK_TRUE && mix[0].ulValueLen == 1, "valid attribute still filled");
  CHECK(mix[1].ulValueLen == CK_UNAVAILABLE_INFORMATION, "invalid attribute marked unavailable");
  CHECK(mix[2].ulValueLen == CK_UNAVAILABLE_INFORMATION, "short buffer marked unavailable");
  CK_ATTRIBUTE id_only = { CKA_ID, small, sizeof small };
  RV(f->C_GetAttributeValue(s, key, &id_only, 1), CKR_BUFFER_TOO_SMALL);
  CK_ATTRIBUTE size_q = { CKA_ID, NULL, 0 };
  RV(f->C_GetAttributeValue(s, key, &size_q, 1), CKR_OK);
  CHECK(size_q.ulValueLen == 20, "CKA_ID size query gives 20 (%lu)", size_q.ulValueLen);
  RV(f->C_GetAttributeValue(s, 0xdeadbeef, &size_q, 1), CKR_OBJECT_HANDLE_INVALID);
  pub = public_key(s, pubh);
  CHECK(pub != NULL, "public key attributes");

  /* Conformance: C_GetObjectSize, the bytes of the values an object shows. */
  CK_ULONG key_size = 0, pub_size = 0, cert_size = 0;
  RV(f->C_GetObjectSize(s, key, &key_size), CKR_OK);
  RV(f->C_GetObjectSize(s, pubh, &pub_size), CKR_OK);
  CHECK(key_size > 256 && pub_size > 256, "key objects hold at least their modulus (%lu, %lu bytes)", key_size, pub_size);
  CK_OBJECT_HANDLE certh = find_one(s, CKO_CERTIFICATE);
  CK_ATTRIBUTE der = { CKA_VALUE, NULL, 0 };
  RV(f->C_GetAttributeValue(s, certh, &der, 1), CKR_OK);
  RV(f->C_GetObjectSize(s, certh, &cert_size), CKR_OK);
  CHECK(cert_size > der.ulValueLen && der.ulValueLen > 300, "a certificate holds its DER and more (%lu > %lu bytes)", cert_size, der.ulValueLen);
  RV(f->C_GetObjectSize(s, key, NULL), CKR_ARGUMENTS_BAD);
  RV(f->C_GetObjectSize(s, 0xdeadbeef, &cert_size), CKR_OBJECT_HANDLE_INVALID);

  /* Sign: size query, then sign. */
  CK_MECHANISM m = { CKM_SHA256_RSA_PKCS, NULL, 0 };
  CK_ULONG sl = 0;
  RV(f->C_SignInit(s, &m, key), CKR_OK);
  RV(f->C_Sign(s, (CK_BYTE_PTR)"abc", 3, NULL, &sl), CKR_OK);
  CHECK(sl >= 256, "size query gives the modulus length (%lu)", sl);
  RV(f->C_Sign(s, (CK_BYTE_PTR)"abc", 3, NULL, NULL), CKR_ARGUMENTS_BAD);
  uint8_t sig[512];
  RV(f->C_Sign(s, (CK_BYTE_PTR)"abc", 3, sig, &sl), CKR_OK);
  CK_RSA_PKCS_PSS_PARAMS pss = { CKM_SHA256, CKG_MGF1_SHA256, 32 };
  CK_MECHANISM mp = { CKM_RSA_PKCS_PSS, &pss, sizeof pss - 1 };
  RV(f->C_SignInit(s, &mp, key), CKR_MECHANISM_PARAM_INVALID);
  CHECK(sign_and_verify(s, key, "single thread"), "sign and verify");

  /* Threads sharing the one connection. */
  pthread_t th[8];
  struct thread_arg ta[8];
  for (int i = 0; i < 8; i++) { ta[i].slot = slot; ta[i].good = 0; pthread_create(&th[i], NULL, signer, &ta[i]); }
  int good = 0;
  for (int i = 0; i < 8; i++) { pthread_join(th[i], NULL); good += ta[i].good; }
  CHECK(good == 200, "200 signatures from 8 threads verify (%d)", good);

  /* fork(): the child signs without logging in again (nginx workers do this). */
  fflush(stdout);
  pid_t pid = fork();
  if (pid == 0) _exit(sign_and_verify(s, key, "from the child") ? 0 : 1);
  int st = 0;
  waitpid(pid, &st, 0);
  CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "forked child signs with the parent's session and login");
  CHECK(sign_and_verify(s, key, "parent after fork"), "parent still signs after the child used its own connection");

  /* Security finding 11 (issue 11): fork() while other threads sign; every child finds whole tables and signs.
     Skipped under valgrind (NITRO_ACM_TEST_FORK_STORM=0), where some of its slowed children miss their timeouts. */
  const char *storm = getenv("NITRO_ACM_TEST_FORK_STORM");
  if (!storm || strcmp(storm, "0") != 0) {
    for (int i = 0; i < 4; i++) { ta[i].slot = slot; ta[i].good = 0; pthread_create(&th[i], NULL, signer, &ta[i]); }
    int children_ok = 0;
    for (int i = 0; i < 20; i++) {
      fflush(stdout);
      pid_t c = fork();
      if (c == 0) {
        int ok = f->C_Initialize(NULL) == CKR_OK;
        CK_SLOT_ID cs = find_slot();
        CK_SESSION_HANDLE cses;
        ok = ok && f->C_OpenSession(cs, CKF_SERIAL_SESSION, NULL, NULL, &cses) == CKR_OK;
        ok = ok && f->C_Login(cses, CKU_USER, (CK_UTF8CHAR_PTR)pin, strlen(pin)) == CKR_OK;
        ok = ok && sign_and_verify(cses, find_one(cses, CKO_PRIVATE_KEY), "child forked while threads sign");
        _exit(ok ? 0 : 1);
      }
      int cst = 0;
      if (c > 0 && waitpid(c, &cst, 0) == c && WIFEXITED(cst) && WEXITSTATUS(cst) == 0) children_ok++;
    }
    int tgood = 0;
    for (int i = 0; i < 4; i++) { pthread_join(th[i], NULL); tgood += ta[i].good; }
    CHECK(children_ok == 20, "20 children forked while 4 threads signed each initialize and sign (%d)", children_ok);
    CHECK(tgood == 100, "and the 4 threads' 100 signatures verify (%d)", tgood);
  }

  /* fork() then C_Initialize in the child (what libp11 and p11-kit do): a fresh start, login needed. */
  fflush(stdout);
  pid = fork();
  if (pid == 0) {
    int ok = f->C_Initialize(NULL) == CKR_OK;
    CK_SLOT_ID cs = find_slot();
    CK_SESSION_HANDLE c;
    ok = ok && f->C_OpenSession(cs, CKF_SERIAL_SESSION, NULL, NULL, &c) == CKR_OK;
    ok = ok && f->C_Login(c, CKU_USER, (CK_UTF8CHAR_PTR)pin, strlen(pin)) == CKR_OK;
    ok = ok && sign_and_verify(c, find_one(c, CKO_PRIVATE_KEY), "child after C_Initialize");
    /* The parent's handle stays valid: threads of a forked server may use it before re-finding it. */
    ok = ok && find_one(c, CKO_PRIVATE_KEY) == key && sign_and_verify(c, key, "child with the parent's key handle");
    _exit(ok ? 0 : 1);
  }
  waitpid(pid, &st, 0);
  CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child that initializes again starts afresh and signs");

  const char *ec_label = getenv("NITRO_ACM_TEST_EC_TOKEN");
  if (ec_label) ec_checks(ec_label);

  RV(f->C_Logout(s), CKR_OK);
  RV(f->C_SignInit(s, &m, key), CKR_USER_NOT_LOGGED_IN);
  RV(f->C_CloseSession(s), CKR_OK);
  RV(f->C_CloseSession(s), CKR_SESSION_HANDLE_INVALID);
  RV(f->C_Finalize((void *)1), CKR_ARGUMENTS_BAD);
  RV(f->C_Finalize(NULL), CKR_OK);
  EVP_PKEY_free(pub);
  dlclose(h);
  printf("%d passed, %d failed\n", passed, failed);
  return failed ? 1 : 0;
}

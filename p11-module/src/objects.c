/*
 * The cache: the enclave's token list turned into slots, objects and stable
 * handles, and the objects' attributes. No I/O; callers hold M.
 */
#include "module.h"

/* ---------- small helpers ---------- */

void pad_copy(unsigned char *dst, size_t n, const char *src)
{
  memset(dst, ' ', n);
  size_t l = strlen(src);
  memcpy(dst, src, l < n ? l : n);
}

long ms_since(const struct timespec *t)
{
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  return (now.tv_sec - t->tv_sec) * 1000L + (now.tv_nsec - t->tv_nsec) / 1000000L;
}

CK_RV rv_for(conn_status st)
{
  return st == CONN_OK ? CKR_OK : CKR_DEVICE_ERROR;
}

/* ---------- objects from the token list ---------- */

static void free_objects(void)
{
  for (size_t i = 0; i < nobjects; i++) {
    OPENSSL_free(objects[i].subject);
    OPENSSL_free(objects[i].issuer);
    OPENSSL_free(objects[i].serial);
  }
  free(objects);
  objects = NULL;
  nobjects = objects_cap = 0;
  free(object_at);
  object_at = NULL;
  object_at_cap = 0;
}

/* The slot, handle and token-list caches outlive C_Finalize (see reset_all_locked); they go when the module is unloaded. */
__attribute__((destructor)) static void free_process_tables(void)
{
  free_objects();
  kw_token_list_free(&list);
  free(handles);
  handles = NULL;
  nhandles = handles_cap = 0;
  free(slots);
  slots = NULL;
  nslots = slots_cap = 0;
  free(label_index);
  label_index = NULL;
  label_index_cap = 0;
}

static size_t fp_slot(const uint8_t fp[32], size_t cap)
{
  uint64_t h;
  memcpy(&h, fp, sizeof h);
  return (size_t)h & (cap - 1);
}

/* Puts an entry into a table with room for it (open addressing, linear probing). */
static void handle_table_put(struct handle_entry *table, size_t cap, const uint8_t fp[32], CK_OBJECT_HANDLE handle)
{
  size_t j = fp_slot(fp, cap);
  while (table[j].handle != CK_INVALID_HANDLE) j = (j + 1) & (cap - 1);
  memcpy(table[j].fp, fp, 32);
  table[j].handle = handle;
}

/* Object handles stay the same for the same object across refreshes and enclave restarts. */
static CK_OBJECT_HANDLE handle_for(const uint8_t fp[32])
{
  if (handles_cap) {
    for (size_t i = fp_slot(fp, handles_cap);; i = (i + 1) & (handles_cap - 1)) {
      if (handles[i].handle == CK_INVALID_HANDLE) break;
      if (memcmp(handles[i].fp, fp, 32) == 0) return handles[i].handle;
    }
  }
  if ((nhandles + 1) * 2 > handles_cap) {
    /* Grow (keep the load under one half) and re-insert. */
    size_t cap = handles_cap ? handles_cap * 2 : 64;
    if (cap > SIZE_MAX / sizeof *handles) return CK_INVALID_HANDLE;
    struct handle_entry *grown = calloc(cap, sizeof *grown);
    if (!grown) return CK_INVALID_HANDLE;
    for (size_t i = 0; i < handles_cap; i++)
      if (handles[i].handle != CK_INVALID_HANDLE) handle_table_put(grown, cap, handles[i].fp, handles[i].handle);
    free(handles);
    handles = grown;
    handles_cap = cap;
  }
  CK_OBJECT_HANDLE h = next_object_handle++;
  handle_table_put(handles, handles_cap, fp, h);
  nhandles++;
  return h;
}

/* SHA-256 of (class, token label, SHA-256 of the DER or modulus): one-shot digests, no EVP fetch per object. */
static void fingerprint(uint8_t out[32], CK_OBJECT_CLASS cls, const char *slot_label, const uint8_t *p, size_t n)
{
  uint8_t buf[1 + 33 + 32];
  size_t l = strnlen(slot_label, KW_MAX_TOKEN_LABEL);
  buf[0] = (uint8_t)cls;
  memcpy(buf + 1, slot_label, l);
  buf[1 + l] = 0;
  SHA256(p, n, buf + 2 + l);
  SHA256(buf, 2 + l + 32, out);
}

static int der_of_name(X509_NAME *name, uint8_t **out, int *len)
{
  *out = NULL;
  *len = i2d_X509_NAME(name, out);
  return *len > 0 ? 0 : -1;
}

/*
 * Subject, issuer and serial number, parsed from the certificate the first time
 * they are asked for, not when the list is applied: X.509 parsing is the
 * costliest part of an object, and most are never asked. Caller holds M.
 */
static void cert_fields(struct object *o)
{
  if (o->fields_parsed) return;
  o->fields_parsed = 1;
  const kw_cert *cert = o->cert ? o->cert : o->key->ncerts ? &o->key->certs[0] : NULL;
  if (!cert) return;
  const unsigned char *p = cert->der;
  X509 *x = d2i_X509(NULL, &p, (long)cert->der_len);
  if (!x) return;
  der_of_name(X509_get_subject_name(x), &o->subject, &o->subject_len);
  if (o->cls == CKO_CERTIFICATE) {
    der_of_name(X509_get_issuer_name(x), &o->issuer, &o->issuer_len);
    o->serial = NULL;
    o->serial_len = i2d_ASN1_INTEGER(X509_get_serialNumber(x), &o->serial);
    if (o->serial_len < 0) o->serial_len = 0;
  }
  X509_free(x);
}

static struct object *add_object(CK_OBJECT_CLASS cls, size_t slot, const kw_key *key, const kw_cert *cert)
{
  if (nobjects == objects_cap) return NULL; /* sized for the whole list by apply_list */
  struct object *o = &objects[nobjects];
  memset(o, 0, sizeof *o);
  o->cls = cls;
  o->slot = slot;
  o->key = key;
  o->cert = cert;
  o->retired = (key->flags & KW_KEY_RETIRED) != 0;
  if (cert) fingerprint(o->fp, cls, slots[slot].label, cert->der, cert->der_len);
  else if (key->key_type == KW_KEY_EC) fingerprint(o->fp, cls, slots[slot].label, key->ec_point, key->ec_point_len);
  else fingerprint(o->fp, cls, slots[slot].label, key->modulus, key->modulus_len);
  o->handle = handle_for(o->fp);
  if (o->handle == CK_INVALID_HANDLE) return NULL;
  nobjects++;
  return o;
}

/*
 * The handle table keeps every object ever listed, so an object that comes back
 * (an enclave restart) gets its old handle. A peer that lists new objects every
 * time would grow it without end: past KW_MAX_OBJECTS it keeps only the objects
 * of the list being replaced. Caller holds M.
 */
static void prune_handles(void)
{
  if (nhandles <= KW_MAX_OBJECTS) return;
  memset(handles, 0, handles_cap * sizeof *handles);
  for (size_t i = 0; i < nobjects; i++) handle_table_put(handles, handles_cap, objects[i].fp, objects[i].handle);
  nhandles = nobjects;
}

static size_t label_hash(const char *label, size_t cap)
{
  uint64_t h = 1469598103934665603ull; /* FNV-1a */
  for (const unsigned char *p = (const unsigned char *)label; *p; p++) h = (h ^ *p) * 1099511628211ull;
  return (size_t)h & (cap - 1);
}

static void label_index_put(size_t slot)
{
  size_t i = label_hash(slots[slot].label, label_index_cap);
  while (label_index[i]) i = (i + 1) & (label_index_cap - 1);
  label_index[i] = slot + 1;
}

/* Sized for `want` labels at a load under one half. 0, or -1 out of memory. Caller holds M. */
static int label_index_rebuild(size_t want)
{
  size_t cap = 64;
  while (cap < 2 * want) cap *= 2;
  size_t *fresh = calloc(cap, sizeof *fresh);
  if (!fresh) return -1;
  free(label_index);
  label_index = fresh;
  label_index_cap = cap;
  for (size_t i = 0; i < nslots; i++) label_index_put(i);
  return 0;
}

/* The slot of a label, or (size_t)-1. Caller holds M. */
static size_t slot_of_label(const char *label)
{
  if (!label_index_cap) return (size_t)-1;
  for (size_t i = label_hash(label, label_index_cap); label_index[i]; i = (i + 1) & (label_index_cap - 1))
    if (strcmp(slots[label_index[i] - 1].label, label) == 0) return label_index[i] - 1;
  return (size_t)-1;
}

/*
 * A slot for a label seen for the first time: a new one, or at MAX_SLOTS that of
 * an absent token that no session uses and nobody is logged in to. (size_t)-1
 * when there is none. Caller holds M; the label index has room for one more.
 */
static size_t new_slot(const char *label)
{
  size_t s = (size_t)-1;
  if (nslots < MAX_SLOTS) {
    if (nslots == slots_cap) {
      size_t cap = slots_cap ? slots_cap * 2 : 16;
      struct slot *grown = realloc(slots, cap * sizeof *grown);
      if (!grown) return (size_t)-1;
      slots = grown;
      slots_cap = cap;
    }
    s = nslots++;
  } else {
    for (size_t i = 0; i < nslots && s == (size_t)-1; i++)
      if (!slots[i].present && !slots[i].nsessions && !slots[i].logged_in) s = i;
    if (s == (size_t)-1) return s;
  }
  memset(&slots[s], 0, sizeof *slots);
  snprintf(slots[s].label, sizeof slots[s].label, "%s", label);
  if (s + 1 == nslots && label_index_cap) label_index_put(s);
  else if (label_index_rebuild(nslots) != 0) label_index_cap = 0; /* a reused slot: its old label must go */
  return s;
}

static size_t object_ref_slot(CK_OBJECT_HANDLE h, size_t cap)
{
  return (size_t)((uint64_t)h * 0x9e3779b97f4a7c15ull >> 7) & (cap - 1);
}

/* The key's CKA_ID and CKA_LABEL, shared by its private and public key and its leaf certificate. */
static void take_key_identity(struct object *o, const kw_key *key)
{
  o->id_len = key->cka_id_len < sizeof o->id ? key->cka_id_len : sizeof o->id;
  memcpy(o->id, key->cka_id, o->id_len);
  o->label = key->label;
}

/* The objects of one key of token slot `s`: private and public key, then its certificates. Caller holds M. */
static void add_key_objects(size_t s, const kw_key *key)
{
  struct object *o;
  for (int c = 0; c < 2; c++)
    if ((o = add_object(c == 0 ? CKO_PRIVATE_KEY : CKO_PUBLIC_KEY, s, key, NULL))) take_key_identity(o, key);
  for (size_t c = 0; c < key->ncerts; c++) {
    const kw_cert *cert = &key->certs[c];
    o = add_object(CKO_CERTIFICATE, s, key, cert);
    if (!o) continue;
    if (c == 0) take_key_identity(o, key);
    else {
      /* Authority certificates get an id of their own so no one pairs them with the key. */
      SHA1(cert->der, cert->der_len, o->id);
      o->id_len = 20;
      o->label = key->label;
      o->ca_index = c;
    }
  }
}

/*
 * Replaces the cached list and rebuilds slots and objects from it. Caller holds
 * M, so it must stay linear in the list: every table is sized once or grows
 * geometrically, and labels and handles are hashed (the list's size is capped
 * by kw_parse_token_list).
 */
void apply_list(kw_token_list *fresh, uint32_t generation)
{
  prune_handles();
  free_objects();
  kw_token_list_free(&list);
  list = *fresh;
  memset(fresh, 0, sizeof *fresh);
  have_list = 1;
  list_dirty = 0;
  list_generation = generation;
  size_t total = 0;
  for (size_t t = 0; t < list.ntokens; t++)
    for (size_t k = 0; k < list.tokens[t].nkeys; k++) total += 2 + list.tokens[t].keys[k].ncerts;
  objects = total ? calloc(total, sizeof *objects) : NULL;
  objects_cap = objects ? total : 0;
  for (size_t i = 0; i < nslots; i++) slots[i].present = 0, slots[i].first_object = slots[i].nobjects = 0;
  if (label_index_rebuild(nslots + list.ntokens) != 0) label_index_cap = 0;
  /*
   * Two passes: tokens that have a slot take theirs first, so a slot handed to a
   * new label (at MAX_SLOTS) is never one whose token is further down this list.
   */
  size_t *slot_of = list.ntokens ? calloc(list.ntokens, sizeof *slot_of) : NULL; /* slot + 1, 0 unassigned, SKIP */
  if (list.ntokens && !slot_of) return; /* out of memory: no token until the next list */
  const size_t SKIP = SIZE_MAX;
  for (int pass = 0; pass < 2; pass++)
    for (size_t t = 0; t < list.ntokens; t++) {
      if (slot_of[t]) continue;
      const char *label = list.tokens[t].label;
      size_t s = slot_of_label(label);
      if (s != (size_t)-1 && slots[s].present) {
        nacm_log("nitro-acm-p11: the enclave listed token %s twice; serving the first", label);
        slot_of[t] = SKIP;
        continue;
      }
      if (s == (size_t)-1) {
        if (pass == 0) continue;
        if ((s = new_slot(label)) == (size_t)-1) {
          nacm_log("nitro-acm-p11: token %s is not served: no free slot (at most %u)", label, (unsigned)MAX_SLOTS);
          slot_of[t] = SKIP;
          continue;
        }
      }
      slots[s].present = 1;
      slots[s].token_index = t;
      slot_of[t] = s + 1;
    }
  for (size_t t = 0; t < list.ntokens; t++) {
    if (!slot_of[t] || slot_of[t] == SKIP) continue;
    size_t s = slot_of[t] - 1;
    slots[s].first_object = nobjects;
    for (size_t k = 0; k < list.tokens[t].nkeys; k++) add_key_objects(s, &list.tokens[t].keys[k]);
    slots[s].nobjects = nobjects - slots[s].first_object;
  }
  free(slot_of);
  size_t cap = 64;
  while (cap < 2 * nobjects) cap *= 2;
  object_at = calloc(cap, sizeof *object_at);
  if (object_at) {
    object_at_cap = cap;
    for (size_t i = 0; i < nobjects; i++) {
      size_t j = object_ref_slot(objects[i].handle, cap);
      while (object_at[j].handle != CK_INVALID_HANDLE) j = (j + 1) & (cap - 1);
      object_at[j].handle = objects[i].handle;
      object_at[j].index = i;
    }
  } /* else: no object is found until the next list, the same as an unreachable enclave */
  /* Slots whose token is gone keep their login and PIN: the token comes back after an enclave restart. */
}

/* Notes the generation a reply carried. Caller holds M. */
void saw_generation(uint32_t generation)
{
  clock_gettime(CLOCK_MONOTONIC, &last_contact);
  if (!have_list || generation != list_generation) list_dirty = 1;
}


struct object *object_get(CK_OBJECT_HANDLE h)
{
  if (h == CK_INVALID_HANDLE || !object_at_cap) return NULL;
  for (size_t i = object_ref_slot(h, object_at_cap); object_at[i].handle != CK_INVALID_HANDLE; i = (i + 1) & (object_at_cap - 1))
    if (object_at[i].handle == h) return &objects[object_at[i].index];
  return NULL;
}

/* Private objects are visible only to a logged-in application. */
int visible(const struct object *o, const struct session *s)
{
  return o->slot == s->slot && slots[o->slot].present && (o->cls != CKO_PRIVATE_KEY || slots[o->slot].logged_in);
}

/* ---------- attributes ---------- */

/* The RSA mechanisms first, then the EC ones: a key's CKA_ALLOWED_MECHANISMS is its part. */
const CK_MECHANISM_TYPE MECHS[] = {
  CKM_RSA_PKCS, CKM_RSA_PKCS_PSS, CKM_RSA_X_509, CKM_RSA_PKCS_OAEP,
  CKM_SHA256_RSA_PKCS, CKM_SHA384_RSA_PKCS, CKM_SHA512_RSA_PKCS,
  CKM_SHA256_RSA_PKCS_PSS, CKM_SHA384_RSA_PKCS_PSS, CKM_SHA512_RSA_PKCS_PSS,
  CKM_ECDSA, CKM_ECDSA_SHA256, CKM_ECDSA_SHA384, CKM_ECDSA_SHA512,
};
const size_t NMECHS = sizeof MECHS / sizeof MECHS[0];
const size_t NRSA_MECHS = 10;

/* The bytes of an EC key's r or s: the curve's field size, from its uncompressed point. */
size_t ec_field_bytes(const kw_key *key)
{
  return key->key_type == KW_KEY_EC ? (key->ec_point_len - 1) / 2 : 0;
}

/*
 * Finds an attribute's value. Returns CKR_OK with (*p, *n) set, or
 * CKR_ATTRIBUTE_TYPE_INVALID / CKR_ATTRIBUTE_SENSITIVE. `scratch` holds
 * small values (CK_ULONG, CK_BBOOL) for the caller to copy.
 */
CK_RV attr_value(struct object *o, CK_ATTRIBUTE_TYPE type, const void **p, CK_ULONG *n, CK_ULONG *scratch)
{
  static const CK_BBOOL T = CK_TRUE, F = CK_FALSE;
  const int key = o->cls != CKO_CERTIFICATE, priv = o->cls == CKO_PRIVATE_KEY;
#define ULONG(v) do { *scratch = (v); *p = scratch; *n = sizeof(CK_ULONG); return CKR_OK; } while (0)
#define BOOL(v) do { *p = (v) ? &T : &F; *n = sizeof(CK_BBOOL); return CKR_OK; } while (0)
#define BYTES(ptr, len) do { *p = (ptr); *n = (CK_ULONG)(len); return CKR_OK; } while (0)
  switch (type) {
  case CKA_CLASS: ULONG(o->cls);
  case CKA_TOKEN: BOOL(1);
  case CKA_PRIVATE: BOOL(priv);
  case CKA_MODIFIABLE: case CKA_COPYABLE: case CKA_DESTROYABLE: BOOL(0);
  case CKA_LABEL:
    if (o->ca_index) {
      /* Callers hold M, and copy the value before they let go of it. */
      static char ca_label[KW_MAX_LABEL_BYTES + 32];
      int len = snprintf(ca_label, sizeof ca_label, "%s CA %zu", o->label, o->ca_index);
      BYTES(ca_label, len < 0 ? 0 : (size_t)len < sizeof ca_label ? (size_t)len : sizeof ca_label - 1);
    }
    BYTES(o->label, strlen(o->label));
  case CKA_ID: BYTES(o->id, o->id_len);
  case CKA_SUBJECT: cert_fields(o); BYTES(o->subject, o->subject_len > 0 ? o->subject_len : 0);
  case CKA_START_DATE: case CKA_END_DATE: BYTES(NULL, 0);
  default: break;
  }
  const int ec = key && o->key->key_type == KW_KEY_EC;
  if (key) {
    switch (type) {
    case CKA_KEY_TYPE: ULONG(ec ? CKK_EC : CKK_RSA);
    case CKA_DERIVE: case CKA_LOCAL: BOOL(0);
    case CKA_KEY_GEN_MECHANISM: ULONG(CK_UNAVAILABLE_INFORMATION);
    case CKA_ALLOWED_MECHANISMS: if (ec) BYTES(MECHS + NRSA_MECHS, (NMECHS - NRSA_MECHS) * sizeof MECHS[0]); BYTES(MECHS, NRSA_MECHS * sizeof MECHS[0]);
    default: break;
    }
  }
  if (ec) {
    switch (type) {
    case CKA_EC_PARAMS: BYTES(o->key->ec_params, o->key->ec_params_len);
    case CKA_EC_POINT:
      if (!priv) {
        /* DER OCTET STRING around the point (at most 133 bytes: one or two length bytes). Callers hold M and copy it. */
        static uint8_t point[3 + 133];
        size_t plen = o->key->ec_point_len, h = plen < 128 ? 2 : 3;
        point[0] = 0x04;
        if (h == 2) point[1] = (uint8_t)plen; else { point[1] = 0x81; point[2] = (uint8_t)plen; }
        memcpy(point + h, o->key->ec_point, plen);
        BYTES(point, h + plen);
      }
      break;
    case CKA_MODULUS: case CKA_MODULUS_BITS: case CKA_PUBLIC_EXPONENT: return CKR_ATTRIBUTE_TYPE_INVALID;
    default: break;
    }
  } else if (key) {
    switch (type) {
    case CKA_MODULUS: BYTES(o->key->modulus, o->key->modulus_len);
    case CKA_MODULUS_BITS: {
      /* Bits of the modulus, counted from its first non-zero byte. */
      size_t i = 0;
      while (i < o->key->modulus_len && o->key->modulus[i] == 0) i++;
      CK_ULONG bits = (CK_ULONG)(o->key->modulus_len - i) * 8;
      for (uint8_t b = i < o->key->modulus_len ? o->key->modulus[i] : 0; bits && !(b & 0x80); b <<= 1) bits--;
      ULONG(bits);
    }
    case CKA_PUBLIC_EXPONENT: BYTES(o->key->exponent, o->key->exponent_len);
    default: break;
    }
  }
  if (priv) {
    switch (type) {
    case CKA_SENSITIVE: case CKA_ALWAYS_SENSITIVE: case CKA_NEVER_EXTRACTABLE: BOOL(1);
    case CKA_SIGN: BOOL(1);
    case CKA_DECRYPT: BOOL(!ec);
    case CKA_SIGN_RECOVER: case CKA_UNWRAP: case CKA_EXTRACTABLE: case CKA_WRAP_WITH_TRUSTED: case CKA_ALWAYS_AUTHENTICATE: BOOL(0);
    case CKA_PRIVATE_EXPONENT: case CKA_PRIME_1: case CKA_PRIME_2: case CKA_EXPONENT_1: case CKA_EXPONENT_2: case CKA_COEFFICIENT: case CKA_VALUE:
      return CKR_ATTRIBUTE_SENSITIVE;
    default: return CKR_ATTRIBUTE_TYPE_INVALID;
    }
  }
  if (o->cls == CKO_PUBLIC_KEY) {
    switch (type) {
    case CKA_ENCRYPT: case CKA_VERIFY: case CKA_VERIFY_RECOVER: case CKA_WRAP: case CKA_TRUSTED: BOOL(0);
    default: return CKR_ATTRIBUTE_TYPE_INVALID;
    }
  }
  switch (type) { /* certificate */
  case CKA_CERTIFICATE_TYPE: ULONG(CKC_X_509);
  case CKA_TRUSTED: BOOL(0);
  case CKA_CERTIFICATE_CATEGORY: ULONG(o->cert->category);
  case CKA_VALUE: BYTES(o->cert->der, o->cert->der_len);
  case CKA_ISSUER: cert_fields(o); BYTES(o->issuer, o->issuer_len > 0 ? o->issuer_len : 0);
  case CKA_SERIAL_NUMBER: cert_fields(o); BYTES(o->serial, o->serial_len);
  case CKA_URL: case CKA_HASH_OF_SUBJECT_PUBLIC_KEY: case CKA_HASH_OF_ISSUER_PUBLIC_KEY: BYTES(NULL, 0);
  case CKA_JAVA_MIDP_SECURITY_DOMAIN: ULONG(0);
  default: return CKR_ATTRIBUTE_TYPE_INVALID;
  }
#undef ULONG
#undef BOOL
#undef BYTES
}

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
#define _GNU_SOURCE
#include <pthread.h>
#include <sys/uio.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <openssl/x509.h>

#include <p11-kit/pkcs11.h>

#include "conn.h"
#include "log.h"
#include "wire.h"

#define EXPORT __attribute__((visibility("default")))
#define DEFAULT_TIMEOUT_MS 5000
/* Within this long of the last reply, a cached list is taken as current (calls in one burst share one check). */
#define SYNC_INTERVAL_MS 20
#define MIN_KEY_BITS 2048
#define MAX_KEY_BITS 4096
#define MAX_SIGN_INPUT 512 /* raw mechanisms take at most the modulus length */

/* ---------- state ---------- */

struct slot {
  char label[KW_MAX_TOKEN_LABEL + 1];
  int present;
  size_t token_index; /* into list.tokens while present */
  size_t first_object, nobjects; /* its objects: objects[first_object ..] (0 while absent) */
  size_t nsessions;
  int logged_in;
  uint8_t pin[KW_MAX_PIN];
  size_t pin_len;
  /* SHA-256 of the last PIN the enclave accepted for this token (kept across fork and re-initialization). */
  uint8_t accepted_pin_digest[32];
  int has_accepted_pin;
};

struct object {
  CK_OBJECT_HANDLE handle;
  uint8_t fp[32]; /* what handle_for() knows it by */
  CK_OBJECT_CLASS cls;
  size_t slot;
  const kw_key *key;
  const kw_cert *cert; /* certificates only */
  int retired;         /* previous key of a renewed token: usable, not findable */
  uint8_t id[20];
  size_t id_len;
  /* CKA_LABEL: the key's label, as long as the list has it (the list owns it); an authority certificate's is its key's with " CA n" (ca_index n > 0). */
  const char *label;
  size_t ca_index;
  uint8_t *subject, *issuer, *serial; /* DER, from the leaf (keys) or the certificate */
  int subject_len, issuer_len, serial_len;
  int fields_parsed; /* the three above (cert_fields) */
};

struct handle_entry {
  uint8_t fp[32];
  CK_OBJECT_HANDLE handle;
};

struct object_ref {
  CK_OBJECT_HANDLE handle; /* CK_INVALID_HANDLE: empty */
  size_t index;            /* into objects[] */
};

/*
 * Slot ids persist for the life of the process (see reset_all_locked), so the
 * table holds labels seen in earlier lists too; past this many, a new label
 * takes over the slot of an absent token nobody uses.
 */
#define MAX_SLOTS (2 * KW_MAX_TOKENS)

enum op_kind { OP_NONE = 0, OP_SIGN, OP_DECRYPT };

struct session {
  CK_SESSION_HANDLE handle;
  size_t slot;
  CK_FLAGS flags;
  /* find */
  int finding;
  CK_OBJECT_HANDLE *found;
  size_t nfound, found_pos;
  /* sign / decrypt */
  enum op_kind op;
  CK_MECHANISM_TYPE mech;
  CK_OBJECT_HANDLE key;
  uint8_t scheme, hash, mgf_hash;
  uint32_t salt_len;
  uint8_t *oaep_label;
  size_t oaep_label_len;
  EVP_MD_CTX *md;            /* hash-and-sign mechanisms */
  uint8_t acc[MAX_SIGN_INPUT]; /* multi-part input of raw mechanisms */
  size_t acc_len;
  int acc_overflow;
};

static pthread_mutex_t M = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;
static int initialized;
static pid_t init_pid;
static conn_address address;
static char address_text[160];
static int timeout_ms = DEFAULT_TIMEOUT_MS;

static kw_token_list list;
static int have_list;
static int list_dirty;
static uint32_t list_generation;
static struct timespec last_contact;

static struct slot *slots;
static size_t nslots, slots_cap;
/* Open addressing on the label (slot index + 1; 0 = empty), rebuilt with each list. */
static size_t *label_index;
static size_t label_index_cap;
static struct object *objects;
static size_t nobjects, objects_cap;
/* Open addressing on the fingerprint (a SHA-256, so its first bytes hash well); capacity a power of two. */
static struct handle_entry *handles;
static size_t nhandles, handles_cap;
/* objects[] index of each handle, open addressing, rebuilt with the list: O(1) lookups per operation. */
static struct object_ref *object_at;
static size_t object_at_cap;
static CK_OBJECT_HANDLE next_object_handle = 1;

static struct session **sessions;
static size_t nsessions_cap;

/* ---------- small helpers ---------- */

static void pad_copy(unsigned char *dst, size_t n, const char *src)
{
  memset(dst, ' ', n);
  size_t l = strlen(src);
  memcpy(dst, src, l < n ? l : n);
}

static long ms_since(const struct timespec *t)
{
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  return (now.tv_sec - t->tv_sec) * 1000L + (now.tv_nsec - t->tv_nsec) / 1000000L;
}

static CK_RV rv_for(conn_status st)
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
static void apply_list(kw_token_list *fresh, uint32_t generation)
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
static void saw_generation(uint32_t generation)
{
  clock_gettime(CLOCK_MONOTONIC, &last_contact);
  if (!have_list || generation != list_generation) list_dirty = 1;
}

/*
 * One request/response round trip. On CKR_OK, *resp points into *reply_out (free it).
 * Returns the transport status as CK_RV; the enclave's own CK_RV is in resp->rv.
 */
static CK_RV call(kw_buf *req, uint32_t id, kw_response *resp, uint8_t **reply_out)
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
 * Brings the cache up to date: LIST when it is known to be stale, else (when
 * `ping` and the last contact is old) a PING to learn the generation. Called
 * without M. If the enclave cannot be reached, the last list stays in place.
 */
static CK_RV sync_list(int ping)
{
  pthread_mutex_lock(&M);
  int need_list = !have_list || list_dirty;
  int need_ping = !need_list && ping && ms_since(&last_contact) > SYNC_INTERVAL_MS;
  pthread_mutex_unlock(&M);
  kw_buf req = { 0 };
  kw_response resp;
  uint8_t *reply = NULL;
  CK_RV rv = CKR_OK;
  if (need_ping) {
    uint32_t id = conn_next_id();
    kw_begin_request(&req, KW_PING, id);
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
    kw_begin_request(&req, KW_LIST, id);
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
 * Before a handle is looked up: a cache emptied by C_Initialize in a forked child
 * is filled again, so a handle the parent handed out (same object, same handle)
 * works at once. Called without M; on failure the lookup fails as before.
 */
static void ensure_list(void)
{
  pthread_mutex_lock(&M);
  int need = !have_list || list_dirty;
  pthread_mutex_unlock(&M);
  if (need) (void)sync_list(0);
}

/*
 * Before a key or object handle is used: fill a stale cache, and if the handle
 * is unknown or its token absent, ask the enclave whether its list changed (at
 * most every SYNC_INTERVAL_MS): after an enclave restart the module may have
 * listed the tokens before the agent provisioned them again, and a web server
 * signing with a handle it already has sends nothing else that would tell it.
 * Called without M.
 */
static struct object *object_get(CK_OBJECT_HANDLE h);

static CK_RV sync_for_handle(CK_OBJECT_HANDLE h)
{
  pthread_mutex_lock(&M);
  int stale = !have_list || list_dirty;
  int missing = 0;
  if (!stale) {
    struct object *o = object_get(h);
    missing = !o || !slots[o->slot].present;
  }
  pthread_mutex_unlock(&M);
  return stale || missing ? sync_list(missing) : CKR_OK;
}

/* ---------- sessions ---------- */

static struct session *session_get(CK_SESSION_HANDLE h)
{
  if (h == 0 || h > nsessions_cap) return NULL;
  return sessions[h - 1];
}

static void op_reset(struct session *s)
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

static void logout_slot(size_t slot)
{
  slots[slot].logged_in = 0;
  OPENSSL_cleanse(slots[slot].pin, sizeof slots[slot].pin);
  slots[slot].pin_len = 0;
}

static void reset_all_locked(void)
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

static struct object *object_get(CK_OBJECT_HANDLE h)
{
  if (h == CK_INVALID_HANDLE || !object_at_cap) return NULL;
  for (size_t i = object_ref_slot(h, object_at_cap); object_at[i].handle != CK_INVALID_HANDLE; i = (i + 1) & (object_at_cap - 1))
    if (object_at[i].handle == h) return &objects[object_at[i].index];
  return NULL;
}

/* Private objects are visible only to a logged-in application. */
static int visible(const struct object *o, const struct session *s)
{
  return o->slot == s->slot && slots[o->slot].present && (o->cls != CKO_PRIVATE_KEY || slots[o->slot].logged_in);
}

/* ---------- attributes ---------- */

static const CK_MECHANISM_TYPE MECHS[] = {
  CKM_RSA_PKCS, CKM_RSA_PKCS_PSS, CKM_RSA_X_509, CKM_RSA_PKCS_OAEP,
  CKM_SHA256_RSA_PKCS, CKM_SHA384_RSA_PKCS, CKM_SHA512_RSA_PKCS,
  CKM_SHA256_RSA_PKCS_PSS, CKM_SHA384_RSA_PKCS_PSS, CKM_SHA512_RSA_PKCS_PSS,
};
#define NMECHS (sizeof MECHS / sizeof MECHS[0])

/*
 * Finds an attribute's value. Returns CKR_OK with (*p, *n) set, or
 * CKR_ATTRIBUTE_TYPE_INVALID / CKR_ATTRIBUTE_SENSITIVE. `scratch` holds
 * small values (CK_ULONG, CK_BBOOL) for the caller to copy.
 */
static CK_RV attr_value(struct object *o, CK_ATTRIBUTE_TYPE type, const void **p, CK_ULONG *n, CK_ULONG *scratch)
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
  if (key) {
    switch (type) {
    case CKA_KEY_TYPE: ULONG(CKK_RSA);
    case CKA_DERIVE: case CKA_LOCAL: BOOL(0);
    case CKA_KEY_GEN_MECHANISM: ULONG(CK_UNAVAILABLE_INFORMATION);
    case CKA_ALLOWED_MECHANISMS: BYTES(MECHS, sizeof MECHS);
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
    case CKA_SIGN: case CKA_DECRYPT: BOOL(1);
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
  if (!initialized) { pthread_mutex_unlock(&M); return CKR_CRYPTOKI_NOT_INITIALIZED; }
  reset_all_locked();
  initialized = 0;
  pthread_mutex_unlock(&M);
  conn_close();
  return CKR_OK;
}

#define REQUIRE_INIT() do { if (!initialized) return CKR_CRYPTOKI_NOT_INITIALIZED; } while (0)

/*
 * A bad session handle is reported before any other error (bad arguments, an
 * unsupported operation), as conformance suites check: looked up first here,
 * and again under the lock where the session is used.
 */
static CK_RV session_check(CK_SESSION_HANDLE h)
{
  pthread_mutex_lock(&M);
  int ok = session_get(h) != NULL;
  pthread_mutex_unlock(&M);
  return ok ? CKR_OK : CKR_SESSION_HANDLE_INVALID;
}
#define REQUIRE_SESSION(h) do { CK_RV session_rv_ = session_check(h); if (session_rv_ != CKR_OK) return session_rv_; } while (0)

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
    (void)sync_list(1);
    clock_gettime(CLOCK_MONOTONIC, &count_query_at);
  } else if (count_query_at.tv_sec == 0 || ms_since(&count_query_at) > 1000) {
    (void)sync_list(1);
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
  ensure_list(); /* slot ids are good from C_Initialize on, as for C_OpenSession */
  pthread_mutex_lock(&M);
  if (slotID == 0 || slotID > nslots) { pthread_mutex_unlock(&M); return CKR_SLOT_ID_INVALID; }
  struct slot *s = &slots[slotID - 1];
  memset(pInfo, 0, sizeof *pInfo);
  char desc[64];
  snprintf(desc, sizeof desc, "nitro-acm enclave token %s", s->label);
  pad_copy(pInfo->slotDescription, sizeof pInfo->slotDescription, desc);
  pad_copy(pInfo->manufacturerID, sizeof pInfo->manufacturerID, "nitro-acm");
  pInfo->flags = (s->present ? CKF_TOKEN_PRESENT : 0) | CKF_HW_SLOT;
  pthread_mutex_unlock(&M);
  return CKR_OK;
}

CK_RV C_GetTokenInfo(CK_SLOT_ID slotID, CK_TOKEN_INFO_PTR pInfo)
{
  REQUIRE_INIT();
  if (!pInfo) return CKR_ARGUMENTS_BAD;
  ensure_list(); /* slot ids are good from C_Initialize on, as for C_OpenSession */
  pthread_mutex_lock(&M);
  CK_RV why;
  struct slot *s = slot_get_rv(slotID, &why);
  if (!s) { pthread_mutex_unlock(&M); return why; }
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
  pthread_mutex_unlock(&M);
  return CKR_OK;
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
  ensure_list(); /* slot ids are good from C_Initialize on, as for C_OpenSession */
  pthread_mutex_lock(&M);
  CK_RV why;
  int ok = slot_get_rv(slotID, &why) != NULL;
  pthread_mutex_unlock(&M);
  if (!ok) return why;
  CK_RV rv = CKR_OK;
  if (pMechanismList) {
    if (*pulCount < NMECHS) rv = CKR_BUFFER_TOO_SMALL;
    else memcpy(pMechanismList, MECHS, sizeof MECHS);
  }
  *pulCount = NMECHS;
  return rv;
}

CK_RV C_GetMechanismInfo(CK_SLOT_ID slotID, CK_MECHANISM_TYPE type, CK_MECHANISM_INFO_PTR pInfo)
{
  REQUIRE_INIT();
  if (!pInfo) return CKR_ARGUMENTS_BAD;
  ensure_list(); /* slot ids are good from C_Initialize on, as for C_OpenSession */
  pthread_mutex_lock(&M);
  CK_RV why;
  int ok = slot_get_rv(slotID, &why) != NULL;
  pthread_mutex_unlock(&M);
  if (!ok) return why;
  if (!mech_known(type)) return CKR_MECHANISM_INVALID;
  pInfo->ulMinKeySize = MIN_KEY_BITS;
  pInfo->ulMaxKeySize = MAX_KEY_BITS;
  pInfo->flags = CKF_HW;
  if (type == CKM_RSA_PKCS || type == CKM_RSA_X_509) pInfo->flags |= CKF_SIGN | CKF_DECRYPT;
  else if (type == CKM_RSA_PKCS_OAEP) pInfo->flags |= CKF_DECRYPT;
  else pInfo->flags |= CKF_SIGN;
  return CKR_OK;
}

/* ---------- sessions ---------- */

CK_RV C_OpenSession(CK_SLOT_ID slotID, CK_FLAGS flags, CK_VOID_PTR pApplication, CK_NOTIFY Notify, CK_SESSION_HANDLE_PTR phSession)
{
  (void)pApplication;
  (void)Notify;
  REQUIRE_INIT();
  if (!phSession) return CKR_ARGUMENTS_BAD;
  if (!(flags & CKF_SERIAL_SESSION)) return CKR_SESSION_PARALLEL_NOT_SUPPORTED;
  ensure_list();
  pthread_mutex_lock(&M);
  /*
   * A slot whose token is away for a moment (the enclave restarting, the token
   * being provisioned again) still opens sessions: libp11 waits, without a
   * timeout, for another thread's session when C_OpenSession fails, which hangs
   * a web-server thread. Operations on the session fail until the token is back.
   */
  if (slotID == 0 || slotID > nslots) { pthread_mutex_unlock(&M); return CKR_SLOT_ID_INVALID; }
  struct session *s = calloc(1, sizeof *s);
  if (!s) { pthread_mutex_unlock(&M); return CKR_HOST_MEMORY; }
  s->slot = slotID - 1;
  s->flags = flags;
  size_t i;
  for (i = 0; i < nsessions_cap && sessions[i]; i++) {}
  if (i == nsessions_cap) {
    size_t cap = nsessions_cap ? nsessions_cap * 2 : 16;
    struct session **grown = realloc(sessions, cap * sizeof *grown);
    if (!grown) { free(s); pthread_mutex_unlock(&M); return CKR_HOST_MEMORY; }
    memset(grown + nsessions_cap, 0, (cap - nsessions_cap) * sizeof *grown);
    sessions = grown;
    nsessions_cap = cap;
  }
  sessions[i] = s;
  s->handle = i + 1;
  slots[s->slot].nsessions++;
  *phSession = s->handle;
  pthread_mutex_unlock(&M);
  return CKR_OK;
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
  struct session *s = session_get(hSession);
  if (!s) { pthread_mutex_unlock(&M); return CKR_SESSION_HANDLE_INVALID; }
  close_session_locked(s);
  pthread_mutex_unlock(&M);
  return CKR_OK;
}

CK_RV C_CloseAllSessions(CK_SLOT_ID slotID)
{
  REQUIRE_INIT();
  pthread_mutex_lock(&M);
  if (slotID == 0 || slotID > nslots) { pthread_mutex_unlock(&M); return CKR_SLOT_ID_INVALID; }
  for (size_t i = 0; i < nsessions_cap; i++)
    if (sessions[i] && sessions[i]->slot == slotID - 1) close_session_locked(sessions[i]);
  pthread_mutex_unlock(&M);
  return CKR_OK;
}

CK_RV C_GetSessionInfo(CK_SESSION_HANDLE hSession, CK_SESSION_INFO_PTR pInfo)
{
  REQUIRE_INIT();
  REQUIRE_SESSION(hSession);
  if (!pInfo) return CKR_ARGUMENTS_BAD;
  pthread_mutex_lock(&M);
  struct session *s = session_get(hSession);
  if (!s) { pthread_mutex_unlock(&M); return CKR_SESSION_HANDLE_INVALID; }
  int rw = (s->flags & CKF_RW_SESSION) != 0, user = slots[s->slot].logged_in;
  pInfo->slotID = s->slot + 1;
  pInfo->state = rw ? (user ? CKS_RW_USER_FUNCTIONS : CKS_RW_PUBLIC_SESSION) : (user ? CKS_RO_USER_FUNCTIONS : CKS_RO_PUBLIC_SESSION);
  pInfo->flags = s->flags;
  pInfo->ulDeviceError = 0;
  pthread_mutex_unlock(&M);
  return CKR_OK;
}

/* Sends LOGIN for a slot's label; `rv_out` gets the enclave's answer. Called without M. */
static CK_RV send_login(const char *label, const uint8_t *pin, size_t pin_len, CK_RV *rv_out)
{
  kw_buf req = { 0 };
  uint32_t id = conn_next_id();
  kw_begin_request(&req, KW_LOGIN, id);
  kw_put_bytes8(&req, label, strlen(label));
  kw_put_bytes8(&req, pin, pin_len);
  kw_response resp;
  uint8_t *reply = NULL;
  CK_RV rv = call(&req, id, &resp, &reply);
  if (rv == CKR_OK) *rv_out = resp.rv;
  OPENSSL_cleanse(req.p, req.cap);
  kw_buf_free(&req);
  free(reply);
  return rv;
}

CK_RV C_Login(CK_SESSION_HANDLE hSession, CK_USER_TYPE userType, CK_UTF8CHAR_PTR pPin, CK_ULONG ulPinLen)
{
  REQUIRE_INIT();
  pthread_mutex_lock(&M);
  struct session *s = session_get(hSession);
  if (!s) { pthread_mutex_unlock(&M); return CKR_SESSION_HANDLE_INVALID; }
  if (userType != CKU_SO && userType != CKU_USER && userType != CKU_CONTEXT_SPECIFIC) { pthread_mutex_unlock(&M); return CKR_USER_TYPE_INVALID; }
  if (!pPin && ulPinLen) { pthread_mutex_unlock(&M); return CKR_ARGUMENTS_BAD; }
  struct slot *slot = &slots[s->slot];
  if (userType == CKU_SO) {
    /*
     * A token with no SO PIN (the agent provisions tokens; nobody administers
     * them through PKCS#11): v2.40's answers, in its order, and never a PIN
     * that works. Nothing is sent to the enclave.
     */
    CK_RV so = slot->logged_in ? CKR_USER_ANOTHER_ALREADY_LOGGED_IN : CKR_PIN_INCORRECT;
    for (size_t i = 0; so == CKR_PIN_INCORRECT && i < nsessions_cap; i++)
      if (sessions[i] && sessions[i]->slot == s->slot && !(sessions[i]->flags & CKF_RW_SESSION)) so = CKR_SESSION_READ_ONLY_EXISTS;
    pthread_mutex_unlock(&M);
    return so;
  }
  /* No PIN of another length was ever given to a token: it is an incorrect one (C_Login has no CKR_PIN_LEN_RANGE). */
  if (ulPinLen < KW_MIN_PIN || ulPinLen > KW_MAX_PIN) { pthread_mutex_unlock(&M); return CKR_PIN_INCORRECT; }
  if (slot->logged_in && userType == CKU_USER) { pthread_mutex_unlock(&M); return CKR_USER_ALREADY_LOGGED_IN; }
  char label[KW_MAX_TOKEN_LABEL + 1];
  snprintf(label, sizeof label, "%s", slot->label);
  size_t slot_index = s->slot;
  pthread_mutex_unlock(&M);

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

CK_RV C_Logout(CK_SESSION_HANDLE hSession)
{
  REQUIRE_INIT();
  pthread_mutex_lock(&M);
  struct session *s = session_get(hSession);
  if (!s) { pthread_mutex_unlock(&M); return CKR_SESSION_HANDLE_INVALID; }
  if (!slots[s->slot].logged_in) { pthread_mutex_unlock(&M); return CKR_USER_NOT_LOGGED_IN; }
  char label[KW_MAX_TOKEN_LABEL + 1];
  snprintf(label, sizeof label, "%s", slots[s->slot].label);
  logout_slot(s->slot);
  pthread_mutex_unlock(&M);
  kw_buf req = { 0 };
  uint32_t id = conn_next_id();
  kw_begin_request(&req, KW_LOGOUT, id);
  kw_put_bytes8(&req, label, strlen(label));
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
  struct session *s = session_get(hSession);
  if (!s) { pthread_mutex_unlock(&M); return CKR_SESSION_HANDLE_INVALID; }
  struct object *o = object_get(hObject);
  if (!o || !visible(o, s)) { pthread_mutex_unlock(&M); return CKR_OBJECT_HANDLE_INVALID; }
  CK_RV rv = CKR_OK;
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

CK_RV C_FindObjectsInit(CK_SESSION_HANDLE hSession, CK_ATTRIBUTE_PTR pTemplate, CK_ULONG ulCount)
{
  REQUIRE_INIT();
  REQUIRE_SESSION(hSession);
  if (!pTemplate && ulCount) return CKR_ARGUMENTS_BAD;
  for (CK_ULONG i = 0; i < ulCount; i++)
    if (!pTemplate[i].pValue && pTemplate[i].ulValueLen) return CKR_ATTRIBUTE_VALUE_INVALID;
  (void)sync_list(1); /* a renewed key must show up here: engines look for it again on a reload */
  pthread_mutex_lock(&M);
  struct session *s = session_get(hSession);
  CK_RV rv = CKR_OK;
  if (!s) rv = CKR_SESSION_HANDLE_INVALID;
  else if (s->finding) rv = CKR_OPERATION_ACTIVE;
  else {
    free(s->found);
    const struct slot *sl = &slots[s->slot];
    s->found = sl->nobjects ? calloc(sl->nobjects, sizeof *s->found) : NULL;
    s->nfound = s->found_pos = 0;
    if (sl->nobjects && !s->found) rv = CKR_HOST_MEMORY;
    /*
     * A renewed token's previous key is found only by its own CKA_ID: a search by
     * label alone gets the current key, while a process still configured with the
     * old key (an httpd child forked before the graceful restart, which re-finds
     * its key by id after fork) gets the one it was configured with.
     */
    int by_id = 0;
    for (CK_ULONG i = 0; i < ulCount; i++) by_id |= pTemplate[i].type == CKA_ID;
    for (size_t i = sl->first_object; rv == CKR_OK && i < sl->first_object + sl->nobjects; i++)
      if (visible(&objects[i], s) && (!objects[i].retired || by_id) && matches(&objects[i], pTemplate, ulCount)) s->found[s->nfound++] = objects[i].handle;
    if (rv == CKR_OK) s->finding = 1;
  }
  pthread_mutex_unlock(&M);
  return rv;
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
    default: rv = CKR_MECHANISM_INVALID; goto out;
    }
    if (m != CKM_RSA_PKCS && m != CKM_RSA_X_509 && m != CKM_RSA_PKCS_PSS) md = evp_for(hash);
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

/*
 * Runs the private-key operation in the enclave. Handles the cases a restart of
 * the enclave or a fork leaves behind: a connection not logged in yet (log in
 * again with the PIN the application gave) and key ids that changed (refetch
 * the list and find the same key again). Called without M.
 */
static CK_RV private_op(CK_OBJECT_HANDLE hKey, uint8_t op, uint8_t scheme, uint8_t hash, uint8_t mgf, uint32_t salt,
                        const uint8_t *label, size_t label_len, const uint8_t *in, size_t in_len, uint8_t *out, size_t *out_len)
{
  for (int attempt = 0; attempt < 3; attempt++) {
    CK_RV srv = sync_for_handle(hKey);
    if (srv != CKR_OK) { nacm_debug("sign/decrypt: cannot refresh the token list (0x%lx)", (unsigned long)srv); return srv; }
    pthread_mutex_lock(&M);
    struct object *o = object_get(hKey);
    if (!o || !slots[o->slot].present) {
      nacm_debug("sign/decrypt: key %lu invalid (%s)", (unsigned long)hKey, !o ? "no such object" : "token absent");
      pthread_mutex_unlock(&M);
      return CKR_KEY_HANDLE_INVALID;
    }
    uint32_t key_id = o->key->key_id;
    struct slot *sl = &slots[o->slot];
    if (!sl->logged_in) { pthread_mutex_unlock(&M); return CKR_USER_NOT_LOGGED_IN; }
    char slot_label[KW_MAX_TOKEN_LABEL + 1];
    uint8_t pin[KW_MAX_PIN];
    size_t pin_len = sl->pin_len;
    memcpy(slot_label, sl->label, sizeof slot_label);
    memcpy(pin, sl->pin, sizeof pin);
    size_t slot_index = o->slot;
    pthread_mutex_unlock(&M);

    kw_buf req = { 0 };
    uint32_t id = conn_next_id();
    kw_begin_request(&req, op, id);
    kw_put_u32(&req, key_id);
    kw_put_u8(&req, scheme);
    kw_put_u8(&req, hash);
    kw_put_u8(&req, mgf);
    kw_put_u8(&req, 0);
    if (op == KW_SIGN) kw_put_u32(&req, salt);
    else kw_put_bytes16(&req, label, label_len);
    kw_put_bytes16(&req, in, in_len);
    kw_response resp;
    uint8_t *reply = NULL;
    CK_RV rv = call(&req, id, &resp, &reply);
    kw_buf_free(&req);
    if (rv != CKR_OK) { OPENSSL_cleanse(pin, sizeof pin); return rv; }
    CK_RV answer = resp.rv;
    if (answer == CKR_OK) {
      if (resp.body_len > *out_len) rv = CKR_DEVICE_ERROR; /* more than the modulus: never from a sane enclave */
      else {
        memcpy(out, resp.body, resp.body_len);
        *out_len = resp.body_len;
      }
      free(reply);
      OPENSSL_cleanse(pin, sizeof pin);
      return rv;
    }
    free(reply);
    if (answer == CKR_USER_NOT_LOGGED_IN && pin_len) {
      /* New connection (fork, enclave restart): log in again by ourselves. */
      CK_RV login_answer = CKR_DEVICE_ERROR;
      rv = send_login(slot_label, pin, pin_len, &login_answer);
      OPENSSL_cleanse(pin, sizeof pin);
      if (rv != CKR_OK) return rv;
      if (login_answer == CKR_PIN_INCORRECT) {
        pthread_mutex_lock(&M);
        if (slot_index < nslots) { logout_slot(slot_index); slots[slot_index].has_accepted_pin = 0; }
        pthread_mutex_unlock(&M);
        nacm_log("nitro-acm-p11: token %s no longer accepts the PIN; logged out", slot_label);
        return CKR_USER_NOT_LOGGED_IN;
      }
      if (login_answer != CKR_OK) return CKR_DEVICE_ERROR;
      continue;
    }
    OPENSSL_cleanse(pin, sizeof pin);
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

/* Caller holds M. Modulus length in bytes of the session's key, or 0. */
static size_t key_bytes(const struct session *s)
{
  struct object *o = object_get(s->key);
  return o ? o->key->modulus_len : 0;
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

/* Shared by C_Sign and C_SignFinal: `data` is the last part (NULL for Final). */
static CK_RV sign_finish(CK_SESSION_HANDLE hSession, const uint8_t *data, size_t len, CK_BYTE_PTR pSignature, CK_ULONG_PTR pulSignatureLen, int single)
{
  REQUIRE_INIT();
  REQUIRE_SESSION(hSession);
  if (!pulSignatureLen || (single && !data && len)) return CKR_ARGUMENTS_BAD;
  pthread_mutex_lock(&M);
  struct session *s = session_get(hSession);
  if (!s) { pthread_mutex_unlock(&M); return CKR_SESSION_HANDLE_INVALID; }
  if (s->op != OP_SIGN) { pthread_mutex_unlock(&M); return CKR_OPERATION_NOT_INITIALIZED; }
  size_t k = key_bytes(s);
  if (!k) { op_reset(s); pthread_mutex_unlock(&M); return CKR_KEY_HANDLE_INVALID; }
  if (!pSignature) { *pulSignatureLen = k; pthread_mutex_unlock(&M); return CKR_OK; }
  if (*pulSignatureLen < k) { *pulSignatureLen = k; pthread_mutex_unlock(&M); return CKR_BUFFER_TOO_SMALL; }
  uint8_t input[MAX_SIGN_INPUT + 64];
  size_t input_len = 0;
  CK_RV rv = sign_input(s, data, len, input, &input_len);
  CK_OBJECT_HANDLE key = s->key;
  uint8_t scheme = s->scheme, hash = s->hash, mgf = s->mgf_hash;
  uint32_t salt = s->salt_len;
  op_reset(s);
  pthread_mutex_unlock(&M);
  if (rv != CKR_OK) return rv;
  size_t out_len = *pulSignatureLen;
  rv = private_op(key, KW_SIGN, scheme, hash, mgf, salt, NULL, 0, input, input_len, pSignature, &out_len);
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

CK_RV C_Decrypt(CK_SESSION_HANDLE hSession, CK_BYTE_PTR pEncryptedData, CK_ULONG ulEncryptedDataLen, CK_BYTE_PTR pData, CK_ULONG_PTR pulDataLen)
{
  REQUIRE_INIT();
  REQUIRE_SESSION(hSession);
  if (!pulDataLen || (!pEncryptedData && ulEncryptedDataLen)) return CKR_ARGUMENTS_BAD;
  pthread_mutex_lock(&M);
  struct session *s = session_get(hSession);
  if (!s) { pthread_mutex_unlock(&M); return CKR_SESSION_HANDLE_INVALID; }
  if (s->op != OP_DECRYPT) { pthread_mutex_unlock(&M); return CKR_OPERATION_NOT_INITIALIZED; }
  size_t k = key_bytes(s);
  if (!k) { op_reset(s); pthread_mutex_unlock(&M); return CKR_KEY_HANDLE_INVALID; }
  if (ulEncryptedDataLen != k) { op_reset(s); pthread_mutex_unlock(&M); return CKR_ENCRYPTED_DATA_LEN_RANGE; }
  if (!pData) { *pulDataLen = k; pthread_mutex_unlock(&M); return CKR_OK; }
  CK_OBJECT_HANDLE key = s->key;
  uint8_t scheme = s->scheme, hash = s->hash, mgf = s->mgf_hash;
  /* The whole label, copied out of the session (another thread may end the operation meanwhile). */
  size_t label_len = s->oaep_label_len;
  uint8_t *label = NULL;
  if (label_len) {
    label = malloc(label_len);
    if (!label) { pthread_mutex_unlock(&M); return CKR_HOST_MEMORY; }
    memcpy(label, s->oaep_label, label_len);
  }
  pthread_mutex_unlock(&M);

  uint8_t out[MAX_SIGN_INPUT];
  size_t out_len = sizeof out;
  CK_RV rv = private_op(key, KW_DECRYPT, scheme, hash, mgf, 0, label, label_len, pEncryptedData, ulEncryptedDataLen, out, &out_len);
  free(label);
  pthread_mutex_lock(&M);
  s = session_get(hSession);
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

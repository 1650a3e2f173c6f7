/*
 * The module's shared state and the functions its files call across: one
 * mutex (M) guards slots, objects and sessions; it is never held across a round
 * trip to the enclave (conn.c has its own locks), so threads of httpd's event
 * MPM sign in parallel. The files, by concern:
 *   module.c   C_Initialize/C_Finalize, configuration, fork handling, slot and
 *              token info, the function list and the unsupported functions
 *   objects.c  the cache: the token list turned into slots, objects and handles,
 *              and their attributes (no I/O)
 *   client.c   round trips to the enclave: call, the list's freshness, LOGIN,
 *              the private-key operation with its retry and re-login
 *   session.c  sessions, login, objects seen through a session (find, attributes)
 *   sign.c     mechanisms, digests and DigestInfo, C_Sign* and C_Decrypt*
 */
#ifndef NITRO_ACM_MODULE_H
#define NITRO_ACM_MODULE_H
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

/* ---------- shared state (defined in module.c) ---------- */

extern pthread_mutex_t M;
extern pthread_once_t atfork_once;
extern int initialized;
extern pid_t init_pid;
extern conn_address address;
extern char address_text[160];
extern int timeout_ms;

extern kw_token_list list;
extern int have_list;
extern int list_dirty;
extern uint32_t list_generation;
extern struct timespec last_contact;

extern struct slot *slots;
extern size_t nslots, slots_cap;
/* Open addressing on the label (slot index + 1; 0 = empty), rebuilt with each list. */
extern size_t *label_index;
extern size_t label_index_cap;
extern struct object *objects;
extern size_t nobjects, objects_cap;
/* Open addressing on the fingerprint (a SHA-256, so its first bytes hash well); capacity a power of two. */
extern struct handle_entry *handles;
extern size_t nhandles, handles_cap;
/* objects[] index of each handle, open addressing, rebuilt with the list: O(1) lookups per operation. */
extern struct object_ref *object_at;
extern size_t object_at_cap;
extern CK_OBJECT_HANDLE next_object_handle;

extern struct session **sessions;
extern size_t nsessions_cap;

extern const CK_MECHANISM_TYPE MECHS[];
extern const size_t NMECHS;
/* MECHS[0 .. NRSA_MECHS) are RSA's, the rest EC's. */
extern const size_t NRSA_MECHS;
size_t ec_field_bytes(const kw_key *key);

#define REQUIRE_INIT() do { if (!initialized) return CKR_CRYPTOKI_NOT_INITIALIZED; } while (0)
#define REQUIRE_SESSION(h) do { CK_RV session_rv_ = session_check(h); if (session_rv_ != CKR_OK) return session_rv_; } while (0)


/* objects.c */
void pad_copy(unsigned char *dst, size_t n, const char *src);
long ms_since(const struct timespec *t);
CK_RV rv_for(conn_status st);
void apply_list(kw_token_list *fresh, uint32_t generation);
void saw_generation(uint32_t generation);
struct object *object_get(CK_OBJECT_HANDLE h);
int visible(const struct object *o, const struct session *s);
CK_RV attr_value(struct object *o, CK_ATTRIBUTE_TYPE type, const void **p, CK_ULONG *n, CK_ULONG *scratch);

/* client.c */
CK_RV call(kw_buf *req, uint32_t id, kw_response *resp, uint8_t **reply_out);
/* What sync_list asks the enclave besides a list it knows to be stale. */
enum sync_check {
  SYNC_IF_STALE,      /* nothing: the list is fetched only when a reply said it changed */
  SYNC_PING_IF_QUIET, /* a PING when the last reply is older than SYNC_INTERVAL_MS */
  SYNC_PING_NOW,      /* a PING whatever the last reply's age */
};
CK_RV sync_list(enum sync_check check);
CK_RV sync_for_handle(CK_OBJECT_HANDLE h);
CK_RV sync_for_slot(CK_SLOT_ID id);
CK_RV send_login(const char *label, const uint8_t *pin, size_t pin_len, CK_RV *rv_out);
CK_RV private_op(CK_OBJECT_HANDLE hKey, uint8_t op, uint8_t scheme, uint8_t hash, uint8_t mgf, uint32_t salt, const uint8_t *label, size_t label_len, const uint8_t *in, size_t in_len, uint8_t *out, size_t *out_len);

/* session.c */
struct session *session_get(CK_SESSION_HANDLE h);
void op_reset(struct session *s);
void logout_slot(size_t slot);
void reset_all_locked(void);
CK_RV session_check(CK_SESSION_HANDLE h);

#endif

#include "wire.h"

#include <stdlib.h>
#include <string.h>

void kw_buf_free(kw_buf *b)
{
  free(b->p);
  memset(b, 0, sizeof *b);
}

static int reserve(kw_buf *b, size_t n)
{
  if (b->failed) return 0;
  if (n > SIZE_MAX - b->len) { b->failed = 1; return 0; }
  if (b->len + n <= b->cap) return 1;
  size_t cap = b->cap ? b->cap : 64;
  while (cap < b->len + n) {
    if (cap > SIZE_MAX / 2) { b->failed = 1; return 0; }
    cap *= 2;
  }
  uint8_t *p = realloc(b->p, cap);
  if (!p) { b->failed = 1; return 0; }
  b->p = p;
  b->cap = cap;
  return 1;
}

void kw_put_u8(kw_buf *b, uint8_t v)
{
  if (reserve(b, 1)) b->p[b->len++] = v;
}

void kw_put_u16(kw_buf *b, uint16_t v)
{
  if (!reserve(b, 2)) return;
  b->p[b->len++] = (uint8_t)(v >> 8);
  b->p[b->len++] = (uint8_t)v;
}

void kw_put_u32(kw_buf *b, uint32_t v)
{
  if (!reserve(b, 4)) return;
  for (int s = 24; s >= 0; s -= 8) b->p[b->len++] = (uint8_t)(v >> s);
}

void kw_put_bytes(kw_buf *b, const void *p, size_t n)
{
  if (n && reserve(b, n)) {
    memcpy(b->p + b->len, p, n);
    b->len += n;
  }
}

void kw_put_bytes8(kw_buf *b, const void *p, size_t n)
{
  if (n > 0xff) { b->failed = 1; return; }
  kw_put_u8(b, (uint8_t)n);
  kw_put_bytes(b, p, n);
}

void kw_put_bytes16(kw_buf *b, const void *p, size_t n)
{
  if (n > 0xffff) { b->failed = 1; return; }
  kw_put_u16(b, (uint16_t)n);
  kw_put_bytes(b, p, n);
}

void kw_begin_request(kw_buf *b, uint8_t op, uint32_t id)
{
  b->len = 0;
  kw_put_u32(b, 0);
  kw_put_u8(b, KW_VERSION);
  kw_put_u8(b, op);
  kw_put_u16(b, 0);
  kw_put_u32(b, id);
}

void kw_end_frame(kw_buf *b)
{
  if (b->failed || b->len < 4) return;
  uint32_t n = (uint32_t)(b->len - 4);
  b->p[0] = (uint8_t)(n >> 24);
  b->p[1] = (uint8_t)(n >> 16);
  b->p[2] = (uint8_t)(n >> 8);
  b->p[3] = (uint8_t)n;
}

void kw_encode_list(kw_buf *b, uint32_t id)
{
  kw_begin_request(b, KW_LIST, id);
  kw_end_frame(b);
}

void kw_encode_ping(kw_buf *b, uint32_t id)
{
  kw_begin_request(b, KW_PING, id);
  kw_end_frame(b);
}

void kw_encode_login(kw_buf *b, uint32_t id, const char *label, const uint8_t *pin, size_t pin_len)
{
  kw_begin_request(b, KW_LOGIN, id);
  kw_put_bytes8(b, label, strlen(label));
  kw_put_bytes8(b, pin, pin_len);
  kw_end_frame(b);
}

void kw_encode_logout(kw_buf *b, uint32_t id, const char *label)
{
  kw_begin_request(b, KW_LOGOUT, id);
  kw_put_bytes8(b, label, strlen(label));
  kw_end_frame(b);
}

/* SIGN and DECRYPT share their first fields; SIGN then has the salt length, DECRYPT the OAEP label. */
static void private_op_head(kw_buf *b, uint8_t code, uint32_t id, const kw_private_op *op)
{
  kw_begin_request(b, code, id);
  kw_put_u32(b, op->key_id);
  kw_put_u8(b, op->scheme);
  kw_put_u8(b, op->hash);
  kw_put_u8(b, op->mgf_hash);
  kw_put_u8(b, 0);
}

void kw_encode_sign(kw_buf *b, uint32_t id, const kw_private_op *op)
{
  private_op_head(b, KW_SIGN, id, op);
  kw_put_u32(b, op->salt_len);
  kw_put_bytes16(b, op->data, op->data_len);
  kw_end_frame(b);
}

void kw_encode_decrypt(kw_buf *b, uint32_t id, const kw_private_op *op)
{
  private_op_head(b, KW_DECRYPT, id, op);
  kw_put_bytes16(b, op->oaep_label, op->oaep_label_len);
  kw_put_bytes16(b, op->data, op->data_len);
  kw_end_frame(b);
}

void kw_reader_init(kw_reader *r, const uint8_t *p, size_t len)
{
  r->p = p;
  r->len = len;
  r->off = 0;
  r->err = 0;
}

const uint8_t *kw_bytes(kw_reader *r, size_t n)
{
  if (r->err || n > r->len - r->off) { r->err = 1; return NULL; }
  const uint8_t *p = r->p + r->off;
  r->off += n;
  return p;
}

uint8_t kw_u8(kw_reader *r)
{
  const uint8_t *p = kw_bytes(r, 1);
  return p ? p[0] : 0;
}

uint16_t kw_u16(kw_reader *r)
{
  const uint8_t *p = kw_bytes(r, 2);
  return p ? (uint16_t)((p[0] << 8) | p[1]) : 0;
}

uint32_t kw_u32(kw_reader *r)
{
  const uint8_t *p = kw_bytes(r, 4);
  return p ? ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3] : 0;
}

int kw_parse_response(const uint8_t *msg, size_t len, kw_response *out)
{
  kw_reader r;
  kw_reader_init(&r, msg, len);
  uint8_t version = kw_u8(&r);
  uint8_t op = kw_u8(&r);
  (void)kw_u16(&r);
  out->id = kw_u32(&r);
  out->rv = kw_u32(&r);
  out->generation = kw_u32(&r);
  if (r.err || version != KW_VERSION || !(op & KW_REPLY_BIT)) return -1;
  out->op = op & (uint8_t)~KW_REPLY_BIT;
  out->body = msg + r.off;
  out->body_len = len - r.off;
  return 0;
}

/* Copies n bytes into a new allocation with a trailing NUL (so labels can be used as strings). */
static uint8_t *dup_field(kw_reader *r, size_t n)
{
  const uint8_t *p = kw_bytes(r, n);
  if (!p) return NULL;
  uint8_t *out = malloc(n + 1);
  if (!out) { r->err = 1; return NULL; }
  memcpy(out, p, n);
  out[n] = 0;
  return out;
}

void kw_token_list_free(kw_token_list *l)
{
  for (size_t i = 0; i < l->ntokens; i++) {
    kw_token *t = &l->tokens[i];
    for (size_t k = 0; k < t->nkeys; k++) {
      kw_key *key = &t->keys[k];
      for (size_t c = 0; c < key->ncerts; c++) free(key->certs[c].der);
      free(key->certs);
      free(key->cka_id);
      free(key->label);
      free(key->modulus);
      free(key->exponent);
      free(key->ec_params);
      free(key->ec_point);
    }
    free(t->keys);
    free(t->label);
    free(t->serial);
  }
  free(l->tokens);
  memset(l, 0, sizeof *l);
}

/*
 * Counts come from the peer: every array is sized from a count that is first
 * checked against the bytes left (each element takes at least one byte), so a
 * hostile count cannot make us allocate more than the frame could describe.
 */
static void *alloc_array(kw_reader *r, size_t count, size_t elem, size_t min_bytes_each)
{
  if (r->err) return NULL;
  if (count == 0) return NULL;
  if (count > (r->len - r->off) / min_bytes_each) { r->err = 1; return NULL; }
  void *p = calloc(count, elem);
  if (!p) r->err = 1;
  return p;
}

int kw_parse_token_list(const uint8_t *body, size_t len, kw_token_list *out)
{
  kw_reader r;
  kw_reader_init(&r, body, len);
  memset(out, 0, sizeof *out);
  int over_cap = 0;
  size_t nobjects = 0;
  size_t ntokens = kw_u16(&r);
  if (ntokens > KW_MAX_TOKENS) over_cap = r.err = 1;
  out->tokens = alloc_array(&r, ntokens, sizeof(kw_token), 5);
  for (size_t i = 0; i < ntokens && !r.err; i++) {
    kw_token *t = &out->tokens[i];
    out->ntokens = i + 1;
    size_t n = kw_u8(&r);
    if (n == 0 || n > 32) { r.err = 1; break; }
    t->label = (char *)dup_field(&r, n);
    n = kw_u8(&r);
    if (n > 16) { r.err = 1; break; }
    t->serial = (char *)dup_field(&r, n);
    size_t nkeys = kw_u16(&r);
    if (nkeys > KW_MAX_KEYS_PER_TOKEN) { over_cap = r.err = 1; break; }
    t->keys = alloc_array(&r, nkeys, sizeof(kw_key), 15);
    for (size_t k = 0; k < nkeys && !r.err; k++) {
      kw_key *key = &t->keys[k];
      t->nkeys = k + 1;
      key->key_id = kw_u32(&r);
      key->flags = kw_u8(&r);
      key->cka_id_len = kw_u8(&r);
      key->cka_id = dup_field(&r, key->cka_id_len);
      key->label = (char *)dup_field(&r, kw_u8(&r));
      key->key_type = kw_u8(&r);
      if (key->key_type == KW_KEY_RSA) {
        key->modulus_len = kw_u16(&r);
        if (key->modulus_len == 0 || key->modulus_len > 1024) { r.err = 1; break; }
        key->modulus = dup_field(&r, key->modulus_len);
        key->exponent_len = kw_u16(&r);
        if (key->exponent_len == 0 || key->exponent_len > 16) { r.err = 1; break; }
        key->exponent = dup_field(&r, key->exponent_len);
      } else if (key->key_type == KW_KEY_EC) {
        /* A named curve's OID (06 len ...), and 04 || X || Y of at most P-521's size. */
        key->ec_params_len = kw_u16(&r);
        if (key->ec_params_len < 3 || key->ec_params_len > 16) { r.err = 1; break; }
        key->ec_params = dup_field(&r, key->ec_params_len);
        key->ec_point_len = kw_u16(&r);
        if (key->ec_point_len < 3 || key->ec_point_len > 133 || key->ec_point_len % 2 == 0) { r.err = 1; break; }
        key->ec_point = dup_field(&r, key->ec_point_len);
        if (!r.err && (key->ec_params[0] != 0x06 || key->ec_params[1] != key->ec_params_len - 2 || key->ec_point[0] != 0x04)) { r.err = 1; break; }
      } else { r.err = 1; break; }
      size_t ncerts = kw_u16(&r);
      nobjects += 2 + ncerts;
      if (ncerts > KW_MAX_CERTS_PER_KEY || nobjects > KW_MAX_OBJECTS) { over_cap = r.err = 1; break; }
      key->certs = alloc_array(&r, ncerts, sizeof(kw_cert), 5);
      for (size_t c = 0; c < ncerts && !r.err; c++) {
        kw_cert *cert = &key->certs[c];
        key->ncerts = c + 1;
        cert->category = kw_u8(&r);
        cert->der_len = kw_u32(&r);
        cert->der = dup_field(&r, cert->der_len);
      }
    }
  }
  if (!r.err && r.off != r.len) r.err = 1;
  if (r.err) {
    kw_token_list_free(out);
    return over_cap ? KW_LIST_OVER_CAP : KW_LIST_MALFORMED;
  }
  return 0;
}

/*
 * Key channel, version 1: the C side of shared/key-wire.ts. docs/protocol.md
 * is the specification. Every length read from the socket is checked against
 * what is left before it is used.
 */
#ifndef NITRO_ACM_WIRE_H
#define NITRO_ACM_WIRE_H

#include <stddef.h>
#include <stdint.h>

#define KW_VERSION 1
#define KW_MAX_REQUEST (16u * 1024u)
/* Longest OAEP label carried to the enclave (shared/key-wire.ts MAX_OAEP_LABEL): fits a request beside a 4096-bit block. */
#define KW_MAX_OAEP_LABEL 8192u
#define KW_MAX_RESPONSE (8u * 1024u * 1024u)
/*
 * Caps on one token list (shared/key-wire.ts LIST_CAPS; docs/protocol.md):
 * the enclave app refuses to hold more, and the module refuses a list over any
 * of them (a buggy or hostile peer must not stall the web server's threads).
 */
#define KW_MAX_TOKENS 1024u
#define KW_MAX_KEYS_PER_TOKEN 16u
#define KW_MAX_CERTS_PER_KEY 8u
#define KW_MAX_OBJECTS 65536u /* over the whole list: 2 per key plus its certificates */
/* A token's label (CK_TOKEN_INFO.label is 32 bytes; shared/key-wire.ts TOKEN_LABEL_MAX_BYTES). */
#define KW_MAX_TOKEN_LABEL 32u
/* Where the module finds the enclave unless told (shared/address.ts DEFAULT_KEY_ADDRESS). */
#define KW_DEFAULT_KEY_ADDRESS "vsock:cid=16;port=9999"
/* A key's label (CKA_LABEL) as LIST carries it: one length byte (KEY_LABEL_MAX_BYTES). */
#define KW_MAX_LABEL_BYTES 255u
/* A token's PIN, in bytes (shared/key-wire.ts PIN_BYTES): AWS's agent takes any non-empty string, and LOGIN carries up to 255. */
#define KW_MIN_PIN 1u
#define KW_MAX_PIN 255u
#define KW_REQUEST_HEADER 8
#define KW_RESPONSE_HEADER 16
#define KW_REPLY_BIT 0x80

enum kw_op { KW_LIST = 1, KW_LOGIN = 2, KW_LOGOUT = 3, KW_SIGN = 4, KW_DECRYPT = 5, KW_PING = 6 };
enum kw_hash { KW_SHA1 = 1, KW_SHA224 = 2, KW_SHA256 = 3, KW_SHA384 = 4, KW_SHA512 = 5 };
/* KW_SIGN_ECDSA: the input is a digest; the signature r||s. */
enum kw_sign_scheme { KW_SIGN_PKCS1 = 1, KW_SIGN_PSS = 2, KW_SIGN_RAW = 3, KW_SIGN_ECDSA = 4 };
/* A key's type in a token list, and what its two public fields hold. */
enum kw_key_type { KW_KEY_RSA = 0, KW_KEY_EC = 1 };
enum kw_decrypt_scheme { KW_DEC_PKCS1 = 1, KW_DEC_OAEP = 2, KW_DEC_RAW = 3 };
#define KW_KEY_RETIRED 1u

/* Growable output buffer; on allocation failure `failed` is set and writes stop. */
typedef struct {
  uint8_t *p;
  size_t len, cap;
  int failed;
} kw_buf;

void kw_buf_free(kw_buf *b);
void kw_put_u8(kw_buf *b, uint8_t v);
void kw_put_u16(kw_buf *b, uint16_t v);
void kw_put_u32(kw_buf *b, uint32_t v);
void kw_put_bytes(kw_buf *b, const void *p, size_t n);
/* Length-prefixed fields; an over-long field sets `failed`. */
void kw_put_bytes8(kw_buf *b, const void *p, size_t n);
void kw_put_bytes16(kw_buf *b, const void *p, size_t n);
/* Starts a request frame: length placeholder + header. kw_end_frame() patches the length. */
void kw_begin_request(kw_buf *b, uint8_t op, uint32_t id);
void kw_end_frame(kw_buf *b);

/*
 * Every request, whole (length prefix included), one function an operation: the
 * C side of shared/key-wire.ts encodeRequest, checked byte for byte against
 * its output by p11-module/tests/vectors_test.c (test/vectors/key-wire.txt).
 */
typedef struct {
  uint32_t key_id;
  uint8_t scheme, hash, mgf_hash;
  uint32_t salt_len;             /* SIGN */
  const uint8_t *oaep_label;     /* DECRYPT */
  size_t oaep_label_len;
  const uint8_t *data;
  size_t data_len;
} kw_private_op;
void kw_encode_list(kw_buf *b, uint32_t id);
void kw_encode_ping(kw_buf *b, uint32_t id);
void kw_encode_login(kw_buf *b, uint32_t id, const char *label, const uint8_t *pin, size_t pin_len);
void kw_encode_logout(kw_buf *b, uint32_t id, const char *label);
void kw_encode_sign(kw_buf *b, uint32_t id, const kw_private_op *op);
void kw_encode_decrypt(kw_buf *b, uint32_t id, const kw_private_op *op);

typedef struct {
  const uint8_t *p;
  size_t len, off;
  int err;
} kw_reader;

void kw_reader_init(kw_reader *r, const uint8_t *p, size_t len);
uint8_t kw_u8(kw_reader *r);
uint16_t kw_u16(kw_reader *r);
uint32_t kw_u32(kw_reader *r);
/* Returns a pointer into the buffer (not NUL-terminated) or NULL with err set. */
const uint8_t *kw_bytes(kw_reader *r, size_t n);

typedef struct {
  uint8_t op; /* without the reply bit */
  uint32_t id, rv, generation;
  const uint8_t *body;
  size_t body_len;
} kw_response;

/* Parses a response message (the frame without its length prefix). 0 on success. */
int kw_parse_response(const uint8_t *msg, size_t len, kw_response *out);

typedef struct {
  uint8_t category;
  uint8_t *der;
  size_t der_len;
} kw_cert;

typedef struct {
  uint32_t key_id;
  uint8_t flags;
  uint8_t *cka_id;
  size_t cka_id_len;
  char *label; /* NUL-terminated copy */
  uint8_t key_type; /* enum kw_key_type */
  /* RSA: modulus and public exponent. */
  uint8_t *modulus, *exponent;
  size_t modulus_len, exponent_len;
  /* EC: CKA_EC_PARAMS (the DER OID of a named curve) and the public point, uncompressed (04 || X || Y). */
  uint8_t *ec_params, *ec_point;
  size_t ec_params_len, ec_point_len;
  kw_cert *certs;
  size_t ncerts;
} kw_key;

typedef struct {
  char *label;  /* NUL-terminated, 1..32 bytes */
  char *serial; /* NUL-terminated, at most 16 bytes */
  kw_key *keys;
  size_t nkeys;
} kw_token;

typedef struct {
  kw_token *tokens;
  size_t ntokens;
} kw_token_list;

/* Parses a LIST reply body into freshly allocated memory; 0 on success, -1 on malformed input, -2 over a cap above. */
#define KW_LIST_MALFORMED (-1)
#define KW_LIST_OVER_CAP (-2)
int kw_parse_token_list(const uint8_t *body, size_t len, kw_token_list *out);
void kw_token_list_free(kw_token_list *l);

#endif

/*
 * libFuzzer harness: the whole module driven by an input that is both a script of
 * PKCS#11 calls (with arbitrary slots, handles, templates, mechanisms, buffer
 * sizes) and the fake enclave's replies to whatever the module sends.
 *
 * Input: u16 script length, the script, then reply chunks. Each chunk is
 * [flags u8][length u16][bytes]: flag 1 sends the bytes as one frame (a length
 * prefix is added), flag 2 also makes them a reply to the request just read
 * (version, op with the reply bit, and the request id are written into the first
 * 8 bytes), otherwise the bytes go out raw. When the chunks run out the fake
 * enclave hangs up. Nothing may crash, hang, leak or trip a sanitizer.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <p11-kit/pkcs11.h>

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static uint8_t *replies;
static size_t replies_len, replies_off;
static int listen_fd = -1;

static int read_full(int fd, uint8_t *p, size_t n)
{
  while (n) {
    ssize_t r = read(fd, p, n);
    if (r <= 0) return -1;
    p += r;
    n -= (size_t)r;
  }
  return 0;
}

/* The next chunk, under the lock; returns 0 when there is none. */
static int next_chunk(uint8_t *flags, uint8_t *buf, size_t *len)
{
  pthread_mutex_lock(&lock);
  int ok = replies_off + 3 <= replies_len;
  if (ok) {
    *flags = replies[replies_off];
    size_t n = (size_t)replies[replies_off + 1] << 8 | replies[replies_off + 2];
    replies_off += 3;
    if (n > replies_len - replies_off) n = replies_len - replies_off;
    memcpy(buf, replies + replies_off, n);
    replies_off += n;
    *len = n;
  }
  pthread_mutex_unlock(&lock);
  return ok;
}

static void serve(int c)
{
  static uint8_t req[16 * 1024 + 4], buf[65536 + 8];
  for (;;) {
    uint8_t head[4];
    if (read_full(c, head, 4)) return;
    uint32_t n = (uint32_t)head[0] << 24 | (uint32_t)head[1] << 16 | (uint32_t)head[2] << 8 | head[3];
    if (n < 8 || n > sizeof req) return;
    if (read_full(c, req, n)) return;
    uint8_t flags;
    size_t len;
    if (!next_chunk(&flags, buf + 4, &len)) return;
    uint8_t *msg = buf + 4;
    if (flags & 2 && len >= 8) {
      msg[0] = 1;
      msg[1] = req[1] | 0x80;
      memcpy(msg + 4, req + 4, 4);
    }
    if (flags & 3) {
      buf[0] = (uint8_t)(len >> 24); buf[1] = (uint8_t)(len >> 16); buf[2] = (uint8_t)(len >> 8); buf[3] = (uint8_t)len;
      if (send(c, buf, len + 4, MSG_NOSIGNAL) < 0) return;
    } else if (send(c, msg, len, MSG_NOSIGNAL) < 0) return;
  }
}

static void *server(void *arg)
{
  (void)arg;
  for (;;) {
    int c = accept(listen_fd, NULL, NULL);
    if (c < 0) continue;
    serve(c);
    close(c);
  }
  return NULL;
}

static char socket_path[108];
static void remove_socket(void) { unlink(socket_path); }

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
  (void)argc; (void)argv;
  signal(SIGPIPE, SIG_IGN);
  snprintf(socket_path, sizeof socket_path, "/tmp/nitro-acm-fuzz-%d.sock", (int)getpid());
  unlink(socket_path);
  atexit(remove_socket); /* each run's socket would otherwise stay in /tmp */
  listen_fd = socket(AF_UNIX, SOCK_STREAM, 0);
  struct sockaddr_un a = { .sun_family = AF_UNIX };
  snprintf(a.sun_path, sizeof a.sun_path, "%s", socket_path);
  if (listen_fd < 0 || bind(listen_fd, (struct sockaddr *)&a, sizeof a) || listen(listen_fd, 16)) { perror("fuzz server"); exit(1); }
  char address[160];
  snprintf(address, sizeof address, "unix:path=%s", socket_path);
  setenv("NITRO_ACM_KEY_ADDRESS", address, 1);
  setenv("NITRO_ACM_TIMEOUT_MS", "10", 1);
  setenv("NITRO_ACM_P11_QUIET", "1", 1);
  pthread_t t;
  pthread_create(&t, NULL, server, NULL);
  pthread_detach(t);
  return 0;
}

/* The script reader: bytes run out as zeros. */
typedef struct { const uint8_t *p; size_t len, off; } script;
static uint8_t s_u8(script *s) { return s->off < s->len ? s->p[s->off++] : 0; }

static const CK_ATTRIBUTE_TYPE TYPES[] = { CKA_CLASS, CKA_ID, CKA_LABEL, CKA_KEY_TYPE, CKA_MODULUS, CKA_PUBLIC_EXPONENT, CKA_VALUE, CKA_SUBJECT, CKA_ISSUER, CKA_SERIAL_NUMBER, CKA_SIGN, CKA_DECRYPT, CKA_PRIVATE, CKA_TOKEN, CKA_SENSITIVE, CKA_EXTRACTABLE, CKA_CERTIFICATE_TYPE, CKA_MODULUS_BITS, 0xdeadbeef };
static const CK_MECHANISM_TYPE MECHS[] = { CKM_RSA_PKCS, CKM_RSA_PKCS_PSS, CKM_RSA_X_509, CKM_SHA256_RSA_PKCS, CKM_SHA384_RSA_PKCS, CKM_SHA512_RSA_PKCS, CKM_SHA256_RSA_PKCS_PSS, CKM_SHA384_RSA_PKCS_PSS, CKM_SHA512_RSA_PKCS_PSS, CKM_RSA_PKCS_OAEP, CKM_ECDSA, 0x12345 };

static CK_ULONG template_of(script *s, CK_ATTRIBUTE *t, uint8_t (*vals)[64])
{
  CK_ULONG n = s_u8(s) % 5;
  for (CK_ULONG i = 0; i < n; i++) {
    t[i].type = TYPES[s_u8(s) % (sizeof TYPES / sizeof *TYPES)];
    size_t len = s_u8(s) % 65;
    for (size_t j = 0; j < len; j++) vals[i][j] = s_u8(s);
    t[i].pValue = s_u8(s) & 1 ? NULL : vals[i];
    t[i].ulValueLen = len;
  }
  return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  if (size < 2) return 0;
  size_t slen = (size_t)data[0] << 8 | data[1];
  if (slen > size - 2) slen = size - 2;
  script s = { data + 2, slen, 0 };
  pthread_mutex_lock(&lock);
  replies = malloc(size - 2 - slen + 1);
  memcpy(replies, data + 2 + slen, size - 2 - slen);
  replies_len = size - 2 - slen;
  replies_off = 0;
  pthread_mutex_unlock(&lock);

  C_Initialize(NULL);
  CK_SESSION_HANDLE sessions[4] = { 0 };
  uint8_t out[1024];
  for (int steps = 0; steps < 32 && s.off < s.len; steps++) {
    CK_SESSION_HANDLE h = sessions[s_u8(&s) % 4];
    switch (s_u8(&s) % 12) {
    case 0: {
      CK_SLOT_ID slots[8];
      CK_ULONG n = s_u8(&s) % 9;
      C_GetSlotList(s_u8(&s) & 1, s_u8(&s) & 1 ? NULL : slots, &n);
      break;
    }
    case 1: { CK_TOKEN_INFO ti; C_GetTokenInfo(s_u8(&s) % 4, &ti); break; }
    case 2: { CK_SESSION_HANDLE n = 0; if (C_OpenSession(s_u8(&s) % 4, CKF_SERIAL_SESSION, NULL, NULL, &n) == CKR_OK) sessions[s_u8(&s) % 4] = n; break; }
    case 3: {
      uint8_t pin[80];
      size_t n = s_u8(&s) % sizeof pin;
      for (size_t i = 0; i < n; i++) pin[i] = s_u8(&s);
      C_Login(h, s_u8(&s) & 1 ? CKU_USER : CKU_SO, pin, n);
      break;
    }
    case 4: {
      CK_ATTRIBUTE t[4]; uint8_t vals[4][64];
      CK_ULONG n = template_of(&s, t, vals);
      if (C_FindObjectsInit(h, t, n) == CKR_OK) {
        CK_OBJECT_HANDLE found[8]; CK_ULONG count = 0;
        C_FindObjects(h, found, s_u8(&s) % 9, &count);
        C_FindObjectsFinal(h);
      }
      break;
    }
    case 5: {
      CK_ATTRIBUTE t[4]; uint8_t vals[4][64];
      CK_ULONG n = template_of(&s, t, vals);
      C_GetAttributeValue(h, s_u8(&s) % 16, t, n);
      break;
    }
    case 6: case 7: {
      int sign = s.off % 2 == 0;
      CK_RSA_PKCS_PSS_PARAMS pss = { CKM_SHA256, CKG_MGF1_SHA256, s_u8(&s) };
      CK_RSA_PKCS_OAEP_PARAMS oaep = { CKM_SHA256, CKG_MGF1_SHA256, CKZ_DATA_SPECIFIED, NULL, 0 };
      CK_MECHANISM m = { MECHS[s_u8(&s) % (sizeof MECHS / sizeof *MECHS)], NULL, 0 };
      if (s_u8(&s) & 1) { if (m.mechanism == CKM_RSA_PKCS_OAEP) { m.pParameter = &oaep; m.ulParameterLen = sizeof oaep; } else { m.pParameter = &pss; m.ulParameterLen = sizeof pss; } }
      CK_OBJECT_HANDLE key = s_u8(&s) % 16;
      uint8_t in[600];
      size_t inlen = (size_t)s_u8(&s) * 2;
      for (size_t i = 0; i < inlen; i++) in[i] = (uint8_t)i;
      CK_ULONG outlen = (CK_ULONG)(s_u8(&s) % 5) * 128;
      if (sign) { if (C_SignInit(h, &m, key) == CKR_OK) { if (s_u8(&s) & 1) { C_SignUpdate(h, in, inlen); C_SignFinal(h, s_u8(&s) & 1 ? NULL : out, &outlen); } else C_Sign(h, in, inlen, s_u8(&s) & 1 ? NULL : out, &outlen); } }
      else if (C_DecryptInit(h, &m, key) == CKR_OK) C_Decrypt(h, in, inlen, s_u8(&s) & 1 ? NULL : out, &outlen);
      break;
    }
    case 8: C_Logout(h); break;
    case 9: C_CloseSession(h); break;
    case 10: C_Finalize(NULL); C_Initialize(NULL); break;
    case 11: { CK_SESSION_INFO si; C_GetSessionInfo(h, &si); break; }
    }
  }
  C_Finalize(NULL);
  pthread_mutex_lock(&lock);
  free(replies);
  replies = NULL;
  replies_len = replies_off = 0;
  pthread_mutex_unlock(&lock);
  return 0;
}

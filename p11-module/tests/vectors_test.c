/*
 * The key channel's golden vectors (test/vectors/key-wire.txt, made by
 * scripts/wire-vectors.ts from the TypeScript side, which defines the format):
 * wire.c must encode every request to the same bytes, decode every token list to
 * the same fields (or refuse it the same way), and conn.c must read every address
 * as address.ts does. Usage: vectors_test FILE. Prints each mismatch and
 * "N passed, M failed".
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../src/conn.h"
#include "../src/wire.h"

static int passed, failed;

/* Decodes hex ("-" is empty) into a new buffer; NULL on a bad digit. */
static uint8_t *unhex(const char *h, size_t *n)
{
  if (strcmp(h, "-") == 0) { *n = 0; return calloc(1, 1); }
  size_t l = strlen(h);
  if (l % 2) return NULL;
  uint8_t *out = malloc(l / 2 + 1);
  for (size_t i = 0; i < l / 2; i++) {
    unsigned v;
    if (sscanf(h + 2 * i, "%2x", &v) != 1) { free(out); return NULL; }
    out[i] = (uint8_t)v;
  }
  *n = l / 2;
  return out;
}

static void hexcat(char **s, size_t *len, size_t *cap, const uint8_t *p, size_t n)
{
  if (n == 0) { const char *dash = "-"; while (*len + 2 > *cap) *s = realloc(*s, *cap *= 2); memcpy(*s + *len, dash, 2); *len += 1; return; }
  while (*len + 2 * n + 1 > *cap) *s = realloc(*s, *cap *= 2);
  for (size_t i = 0; i < n; i++) sprintf(*s + *len + 2 * i, "%02x", p[i]);
  *len += 2 * n;
}

static void strcat_grow(char **s, size_t *len, size_t *cap, const char *t)
{
  size_t n = strlen(t);
  while (*len + n + 1 > *cap) *s = realloc(*s, *cap *= 2);
  memcpy(*s + *len, t, n + 1);
  *len += n;
}

/* The decoded list in scripts/wire-vectors.ts's summary format. */
static char *summary(const kw_token_list *l)
{
  size_t cap = 256, len = 0;
  char *s = malloc(cap), num[64];
  s[0] = 0;
  if (l->ntokens == 0) strcat_grow(&s, &len, &cap, "-");
  for (size_t t = 0; t < l->ntokens; t++) {
    const kw_token *tok = &l->tokens[t];
    if (t) strcat_grow(&s, &len, &cap, "|");
    strcat_grow(&s, &len, &cap, tok->label);
    strcat_grow(&s, &len, &cap, "/");
    strcat_grow(&s, &len, &cap, tok->serial);
    strcat_grow(&s, &len, &cap, "/");
    if (tok->nkeys == 0) strcat_grow(&s, &len, &cap, "-");
    for (size_t k = 0; k < tok->nkeys; k++) {
      const kw_key *key = &tok->keys[k];
      if (k) strcat_grow(&s, &len, &cap, ";");
      snprintf(num, sizeof num, "%u.%u.", (unsigned)key->key_id, (unsigned)key->flags);
      strcat_grow(&s, &len, &cap, num);
      hexcat(&s, &len, &cap, key->cka_id, key->cka_id_len);
      strcat_grow(&s, &len, &cap, ".");
      strcat_grow(&s, &len, &cap, key->label);
      snprintf(num, sizeof num, ".%u.%zu.%zu.", (unsigned)key->key_type, key->key_type == KW_KEY_EC ? key->ec_params_len : key->modulus_len, key->key_type == KW_KEY_EC ? key->ec_point_len : key->exponent_len);
      strcat_grow(&s, &len, &cap, num);
      if (key->ncerts == 0) strcat_grow(&s, &len, &cap, "-");
      for (size_t c = 0; c < key->ncerts; c++) {
        snprintf(num, sizeof num, "%s%u:%zu", c ? "," : "", (unsigned)key->certs[c].category, key->certs[c].der_len);
        strcat_grow(&s, &len, &cap, num);
      }
    }
  }
  return s;
}

static void check_frame(const char *line, kw_buf *b, const char *want_hex)
{
  size_t n;
  uint8_t *want = unhex(want_hex, &n);
  int ok = want && !b->failed && b->len == n && memcmp(b->p, want, n) == 0;
  if (ok) passed++;
  else { failed++; printf("FAIL request: %.80s... (C made %zu bytes, expected %zu)\n", line, b->len, n); }
  free(want);
  kw_buf_free(b);
}

int main(int argc, char **argv)
{
  if (argc != 2) { fprintf(stderr, "usage: %s test/vectors/key-wire.txt\n", argv[0]); return 2; }
  FILE *f = fopen(argv[1], "r");
  if (!f) { perror(argv[1]); return 2; }
  char *line = NULL;
  size_t cap = 0;
  ssize_t got;
  while ((got = getline(&line, &cap, f)) > 0) {
    if (line[got - 1] == '\n') line[--got] = 0;
    char *copy = strdup(line), *save = NULL;
    char *fld[12];
    int nf = 0;
    for (char *t = strtok_r(copy, " ", &save); t && nf < 12; t = strtok_r(NULL, " ", &save)) fld[nf++] = t;
    kw_buf b = { 0 };
    if (nf == 3 && (strcmp(fld[0], "list") == 0 || strcmp(fld[0], "ping") == 0)) {
      uint32_t id = (uint32_t)strtoul(fld[1], NULL, 10);
      if (fld[0][0] == 'l') kw_encode_list(&b, id); else kw_encode_ping(&b, id);
      check_frame(line, &b, fld[2]);
    } else if (nf == 5 && strcmp(fld[0], "login") == 0) {
      size_t pn;
      uint8_t *pin = unhex(fld[3], &pn);
      kw_encode_login(&b, (uint32_t)strtoul(fld[1], NULL, 10), fld[2], pin, pn);
      free(pin);
      check_frame(line, &b, fld[4]);
    } else if (nf == 4 && strcmp(fld[0], "logout") == 0) {
      kw_encode_logout(&b, (uint32_t)strtoul(fld[1], NULL, 10), fld[2]);
      check_frame(line, &b, fld[3]);
    } else if (nf == 9 && (strcmp(fld[0], "sign") == 0 || strcmp(fld[0], "decrypt") == 0)) {
      int sign = fld[0][0] == 's';
      size_t dn, ln = 0;
      uint8_t *data = unhex(fld[7], &dn), *label = sign ? NULL : unhex(fld[6], &ln);
      kw_private_op op = { .key_id = (uint32_t)strtoul(fld[2], NULL, 10), .scheme = (uint8_t)atoi(fld[3]), .hash = (uint8_t)atoi(fld[4]), .mgf_hash = (uint8_t)atoi(fld[5]),
                           .salt_len = sign ? (uint32_t)strtoul(fld[6], NULL, 10) : 0, .oaep_label = label, .oaep_label_len = ln, .data = data, .data_len = dn };
      if (sign) kw_encode_sign(&b, (uint32_t)strtoul(fld[1], NULL, 10), &op);
      else kw_encode_decrypt(&b, (uint32_t)strtoul(fld[1], NULL, 10), &op);
      free(data);
      free(label);
      check_frame(line, &b, fld[8]);
    } else if (nf == 3 && strcmp(fld[0], "tokenlist") == 0) {
      size_t n;
      uint8_t *body = unhex(fld[1], &n);
      kw_token_list l;
      int rc = kw_parse_token_list(body, n, &l);
      char *got_s = rc == 0 ? summary(&l) : strdup(rc == KW_LIST_OVER_CAP ? "overcap" : "malformed");
      if (strcmp(got_s, fld[2]) == 0) passed++;
      else { failed++; printf("FAIL token list: C read %.200s, expected %.200s\n", got_s, fld[2]); }
      if (rc == 0) kw_token_list_free(&l);
      free(got_s);
      free(body);
    } else if (nf == 3 && strcmp(fld[0], "address") == 0) {
      conn_address a;
      char verdict[200];
      if (conn_parse_address(fld[1], &a) != 0) snprintf(verdict, sizeof verdict, "bad");
      else if (a.is_vsock) snprintf(verdict, sizeof verdict, "vsock:%u:%u", (unsigned)a.cid, (unsigned)a.port);
      else snprintf(verdict, sizeof verdict, "unix:%s", a.path);
      if (strcmp(verdict, fld[2]) == 0) passed++;
      else { failed++; printf("FAIL address %s: C reads %s, TypeScript %s\n", fld[1], verdict, fld[2]); }
    } else {
      failed++;
      printf("FAIL unreadable vector: %.80s\n", line);
    }
    free(copy);
  }
  free(line);
  fclose(f);
  printf("%d passed, %d failed\n", passed, failed);
  return failed || !passed ? 1 : 0;
}

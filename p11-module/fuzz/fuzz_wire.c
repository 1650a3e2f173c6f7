/*
 * libFuzzer harness: the key channel's parsers on arbitrary bytes from the
 * enclave side: a response message (kw_parse_response) and, when it parses, its
 * body as a token list (kw_parse_token_list). Neither may read past the input,
 * leak, or trip a sanitizer, whatever the bytes.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "../src/wire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  kw_response resp;
  if (kw_parse_response(data, size, &resp) == 0) {
    kw_token_list list;
    if (kw_parse_token_list(resp.body, resp.body_len, &list) == 0) kw_token_list_free(&list);
  }
  /* The bytes as a token list body on their own as well (a LIST reply's body). */
  kw_token_list list;
  if (kw_parse_token_list(data, size, &list) == 0) kw_token_list_free(&list);
  return 0;
}

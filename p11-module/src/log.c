#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

void nacm_log(const char *fmt, ...)
{
  static int quiet = -1;
  if (quiet < 0) quiet = getenv("NITRO_ACM_P11_QUIET") != NULL;
  if (quiet) return;
  char line[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(line, sizeof line, fmt, ap);
  va_end(ap);
  fprintf(stderr, "%s\n", line);
}

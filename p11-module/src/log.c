#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static void emit(const char *fmt, va_list ap)
{
  char line[512];
  vsnprintf(line, sizeof line, fmt, ap);
  fprintf(stderr, "%s\n", line);
}

void nacm_log(const char *fmt, ...)
{
  static int quiet = -1;
  if (quiet < 0) quiet = getenv("NITRO_ACM_P11_QUIET") != NULL;
  if (quiet) return;
  va_list ap;
  va_start(ap, fmt);
  emit(fmt, ap);
  va_end(ap);
}

void nacm_debug(const char *fmt, ...)
{
  static int on = -1;
  if (on < 0) on = getenv("NITRO_ACM_P11_DEBUG") != NULL;
  if (!on) return;
  char with_pid[160];
  snprintf(with_pid, sizeof with_pid, "nitro-acm-p11[%d]: %s", (int)getpid(), fmt);
  va_list ap;
  va_start(ap, fmt);
  emit(with_pid, ap);
  va_end(ap);
}

#define _POSIX_C_SOURCE 200809L
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
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
  /* Wall-clock milliseconds, so a debug log lines up with the agent's and the web server's. */
  struct timespec now;
  clock_gettime(CLOCK_REALTIME, &now);
  char with_pid[200];
  snprintf(with_pid, sizeof with_pid, "%lld.%03ld nitro-acm-p11[%d]: %s", (long long)now.tv_sec, now.tv_nsec / 1000000, (int)getpid(), fmt);
  va_list ap;
  va_start(ap, fmt);
  emit(with_pid, ap);
  va_end(ap);
}

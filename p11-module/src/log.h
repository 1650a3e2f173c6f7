#ifndef NITRO_ACM_LOG_H
#define NITRO_ACM_LOG_H
/* One line on stderr (the web server's error log) for state changes only, never per operation,
   and never a PIN or key. */
void nacm_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
#endif

#ifndef NITRO_ACM_LOG_H
#define NITRO_ACM_LOG_H
/* One line on stderr (the web server's error log) for state changes only, never per operation,
   and never a PIN or key. */
void nacm_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Per-operation detail for troubleshooting, only when NITRO_ACM_P11_DEBUG is set; never a PIN or key. */
void nacm_debug(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
#endif

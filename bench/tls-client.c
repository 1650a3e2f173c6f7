/*
 * What a TLS client's full handshake costs on this machine, with nothing else in
 * the client: one connection at a time, a new handshake per request (no session
 * resumption), "GET /" and the whole reply read, by OpenSSL or by GnuTLS (whose
 * X25519 and RSA code differ). bench/handshakes.ts compiles and runs it against
 * the key-in-a-file nginx: in the nitro layout the load generator shares nginx's
 * CPU, so its cost bounds the handshake rate a remote key can reach there.
 *
 *   tls-client openssl|gnutls PORT 1.2|1.3 N
 *
 * prints one JSON line: handshakes that got "HTTP/1.1 200" and the CPU time the
 * client spent per handshake (µs, user + system, from getrusage: the system part
 * includes the loopback TCP work the kernel does in the sender's context).
 */
#include <arpa/inet.h>
#include <gnutls/gnutls.h>
#include <netinet/in.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

static const char REQUEST[] = "GET / HTTP/1.1\r\nHost: bench.test\r\nConnection: close\r\n\r\n";

static int connect_to(int port)
{
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
  if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
    perror("connect");
    exit(1);
  }
  return fd;
}

static int is_ok(const char *reply, size_t len)
{
  return len >= 12 && memcmp(reply, "HTTP/1.1 200", 12) == 0;
}

static int one_openssl(SSL_CTX *ctx, int port)
{
  int fd = connect_to(port), ok = 0;
  SSL *ssl = SSL_new(ctx);
  char reply[4096];
  size_t got = 0;
  int n;
  SSL_set_fd(ssl, fd);
  SSL_set_tlsext_host_name(ssl, "bench.test");
  if (SSL_connect(ssl) == 1 && SSL_write(ssl, REQUEST, sizeof REQUEST - 1) > 0) {
    while (got < sizeof reply && (n = SSL_read(ssl, reply + got, sizeof reply - got)) > 0)
      got += n;
    ok = is_ok(reply, got);
  }
  SSL_free(ssl);
  close(fd);
  return ok;
}

static int one_gnutls(gnutls_certificate_credentials_t cred, const char *priority, int port)
{
  int fd = connect_to(port), ok = 0, r;
  gnutls_session_t s;
  char reply[4096];
  size_t got = 0;
  gnutls_init(&s, GNUTLS_CLIENT);
  if (gnutls_priority_set_direct(s, priority, NULL) < 0) {
    fprintf(stderr, "gnutls priority %s refused\n", priority);
    exit(1);
  }
  gnutls_credentials_set(s, GNUTLS_CRD_CERTIFICATE, cred);
  gnutls_server_name_set(s, GNUTLS_NAME_DNS, "bench.test", strlen("bench.test"));
  gnutls_transport_set_int(s, fd);
  do r = gnutls_handshake(s); while (r < 0 && !gnutls_error_is_fatal(r));
  if (r == 0 && gnutls_record_send(s, REQUEST, sizeof REQUEST - 1) > 0) {
    while (got < sizeof reply) {
      ssize_t n = gnutls_record_recv(s, reply + got, sizeof reply - got);
      /* TLS 1.3's post-handshake messages come back as "again" on a blocking socket */
      if (n == GNUTLS_E_AGAIN || n == GNUTLS_E_INTERRUPTED) continue;
      if (n <= 0) break;
      got += n;
    }
    ok = is_ok(reply, got);
  }
  gnutls_deinit(s);
  close(fd);
  return ok;
}

static double cpu_us(void)
{
  struct rusage r;
  getrusage(RUSAGE_SELF, &r);
  return (r.ru_utime.tv_sec + r.ru_stime.tv_sec) * 1e6 + r.ru_utime.tv_usec + r.ru_stime.tv_usec;
}

int main(int argc, char **argv)
{
  if (argc != 5 || (strcmp(argv[1], "openssl") && strcmp(argv[1], "gnutls")) || (strcmp(argv[3], "1.2") && strcmp(argv[3], "1.3"))) {
    fprintf(stderr, "usage: tls-client openssl|gnutls PORT 1.2|1.3 N\n");
    return 2;
  }
  int port = atoi(argv[2]), n = atoi(argv[4]), tls13 = !strcmp(argv[3], "1.3"), ok = 0;
  int use_openssl = !strcmp(argv[1], "openssl");
  /* X25519 first, as wrk's OpenSSL offers it; the certificate is not checked (as wrk), the handshake's signature is */
  const char *priority = tls13 ? "NORMAL:-VERS-ALL:+VERS-TLS1.3:-GROUP-ALL:+GROUP-X25519" : "NORMAL:-VERS-ALL:+VERS-TLS1.2:-GROUP-ALL:+GROUP-X25519";
  SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
  gnutls_certificate_credentials_t cred;
  int version = tls13 ? TLS1_3_VERSION : TLS1_2_VERSION;
  SSL_CTX_set_min_proto_version(ctx, version);
  SSL_CTX_set_max_proto_version(ctx, version);
  gnutls_global_init();
  gnutls_certificate_allocate_credentials(&cred);
  /* one handshake first, outside the count: library set-up is not a handshake's cost */
  if (!(use_openssl ? one_openssl(ctx, port) : one_gnutls(cred, priority, port))) {
    fprintf(stderr, "%s: no HTTP 200 over TLS %s from port %d\n", argv[1], argv[3], port);
    return 1;
  }
  double start = cpu_us();
  for (int i = 0; i < n; i++)
    ok += use_openssl ? one_openssl(ctx, port) : one_gnutls(cred, priority, port);
  printf("{\"handshakes\":%d,\"cpuUs\":%.1f}\n", ok, (cpu_us() - start) / (n > 0 ? n : 1));
  return ok == n ? 0 : 1;
}

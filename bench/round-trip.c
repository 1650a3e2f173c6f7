/*
 * The floor of any remote key on this machine: two processes exchanging a
 * request and a reply over a unix stream socket, doing no other work. The
 * caller does what the PKCS#11 module does for a signature (send, poll, recv);
 * the callee what an enclave app's key worker does (epoll_wait, read, send).
 * bench/handshakes.ts compiles and runs it beside the sign latencies.
 *
 *   round-trip N REQUEST_BYTES REPLY_BYTES [CALLER_CPU CALLEE_CPU]
 *
 * (the CPUs pin each side to one CPU; without them the scheduler places both)
 * prints one JSON line: latencies (p50, p99 in µs) and the CPU time each side
 * spent per round trip (µs, from getrusage).
 */
#define _GNU_SOURCE
#include <poll.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now_us(void)
{
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

static double cpu_us(int who)
{
  struct rusage r;
  getrusage(who, &r);
  return (r.ru_utime.tv_sec + r.ru_stime.tv_sec) * 1e6 + r.ru_utime.tv_usec + r.ru_stime.tv_usec;
}

static void pin_to(long cpu)
{
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET((int)cpu, &set);
  if (sched_setaffinity(0, sizeof set, &set) < 0) { perror("sched_setaffinity"); exit(1); }
}

static int by_value(const void *a, const void *b)
{
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

/* Serves until the caller closes its end: one reply of reply_len bytes per request received. */
static void callee(int fd, size_t req_len, size_t reply_len)
{
  static char buf[65536];
  int ep = epoll_create1(0);
  struct epoll_event ev = { .events = EPOLLIN, .data.fd = fd };
  if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) _exit(1);
  size_t have = 0;
  for (;;) {
    if (epoll_wait(ep, &ev, 1, -1) < 0) continue;
    ssize_t r = read(fd, buf, sizeof buf);
    if (r <= 0) _exit(0);
    for (have += (size_t)r; have >= req_len; have -= req_len)
      if (send(fd, buf, reply_len, MSG_NOSIGNAL) != (ssize_t)reply_len) _exit(1);
  }
}

int main(int argc, char **argv)
{
  if (argc != 4 && argc != 6) { fprintf(stderr, "usage: round-trip N REQUEST_BYTES REPLY_BYTES [CALLER_CPU CALLEE_CPU]\n"); return 2; }
  long n = atol(argv[1]), req_len = atol(argv[2]), reply_len = atol(argv[3]);
  long caller_cpu = argc == 6 ? atol(argv[4]) : -1, callee_cpu = argc == 6 ? atol(argv[5]) : -1;
  if (n < 1 || n > 10000000 || req_len < 1 || req_len > 65536 || reply_len < 1 || reply_len > 65536
      || caller_cpu < -1 || caller_cpu >= CPU_SETSIZE || callee_cpu < -1 || callee_cpu >= CPU_SETSIZE) {
    fprintf(stderr, "round-trip: N in 1..10000000, sizes in 1..65536 bytes, CPUs from 0\n");
    return 2;
  }
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0) { perror("socketpair"); return 1; }
  pid_t child = fork();
  if (child < 0) { perror("fork"); return 1; }
  if (child == 0) {
    if (callee_cpu >= 0) pin_to(callee_cpu);
    close(sv[0]);
    callee(sv[1], (size_t)req_len, (size_t)reply_len);
  }
  if (caller_cpu >= 0) pin_to(caller_cpu);
  close(sv[1]);
  char *buf = calloc(1, (size_t)(req_len > reply_len ? req_len : reply_len));
  double *lat = malloc(sizeof *lat * (size_t)n);
  if (!buf || !lat) return 1;
  long warm = n / 20 + 10;
  double cpu0 = 0;
  for (long i = -warm; i < n; i++) {
    if (i == 0) cpu0 = cpu_us(RUSAGE_SELF);
    double t0 = now_us();
    if (send(sv[0], buf, (size_t)req_len, MSG_NOSIGNAL) != req_len) { perror("send"); return 1; }
    for (long got = 0; got < reply_len;) {
      struct pollfd p = { .fd = sv[0], .events = POLLIN };
      if (poll(&p, 1, 5000) != 1) { fprintf(stderr, "round-trip: no reply within 5 s\n"); return 1; }
      ssize_t r = recv(sv[0], buf, (size_t)(reply_len - got), MSG_DONTWAIT);
      if (r <= 0) { perror("recv"); return 1; }
      got += r;
    }
    if (i >= 0) lat[i] = now_us() - t0;
  }
  double caller = (cpu_us(RUSAGE_SELF) - cpu0) / (double)n;
  close(sv[0]);
  if (waitpid(child, NULL, 0) != child) { perror("waitpid"); return 1; }
  /* The callee's whole life, warm-up included: it did nothing else. */
  double callee_us = cpu_us(RUSAGE_CHILDREN) / (double)(n + warm);
  qsort(lat, (size_t)n, sizeof *lat, by_value);
  printf("{\"p50\":%.1f,\"p99\":%.1f,\"callerCpu\":%.1f,\"calleeCpu\":%.1f}\n", lat[n / 2], lat[n * 99 / 100], caller, callee_us);
  return 0;
}

#ifndef CCUTOVER_SYS_H
#define CCUTOVER_SYS_H
// The few Linux interfaces Glibc's Swift module does not expose. Everything here is a thin
// pass-through; error handling (errno) is done by the Swift syscall layer (Posix.swift).
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/timerfd.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <time.h>

int cutover_accept4(int fd, struct sockaddr *addr, socklen_t *len, int flags);
int cutover_errno(void);
void cutover_set_errno(int value);
/// CLOCK_MONOTONIC in milliseconds (served by the vDSO: no syscall).
long long cutover_monotonic_ms(void);
/// CLOCK_MONOTONIC in nanoseconds.
long long cutover_monotonic_ns(void);

#endif

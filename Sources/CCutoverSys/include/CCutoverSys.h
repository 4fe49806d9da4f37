#ifndef CCUTOVER_SYS_H
#define CCUTOVER_SYS_H
// The few Linux interfaces Glibc's Swift module does not expose. Everything here is a thin
// pass-through; error handling (errno) is done by the Swift syscall layer (Posix.swift).
// The header avoids _GNU_SOURCE and socket headers so its types never clash with the ones
// Swift's Glibc module already imports; the .c file defines what it needs.
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/timerfd.h>

/// accept4(2); `address` is a `struct sockaddr *`, `length` a `socklen_t *`.
int cutover_accept4(int fd, void *address, unsigned int *length, int flags);
int cutover_errno(void);
/// SO_PEERCRED of a Unix socket: the peer's uid and pid. 0 on success, -1 with errno set.
int cutover_peer_credentials(int fd, unsigned int *uid, int *pid);
/// CLOCK_MONOTONIC in milliseconds (served by the vDSO: no syscall).
long long cutover_monotonic_ms(void);
/// CLOCK_MONOTONIC in nanoseconds.
long long cutover_monotonic_ns(void);
long long cutover_realtime_ns(void);
/// TIOCGWINSZ of a terminal. 0 on success, -1 with errno set (not a terminal).
int cutover_terminal_size(int fd, unsigned short *rows, unsigned short *columns);
/// Notes SIGWINCH (bit 1) and SIGINT, SIGTERM, SIGHUP (bit 2) in a flag, without SA_RESTART.
void cutover_watch_terminal_signals(void);
/// The signals noted since the last call (bits as above), and clears them.
int cutover_take_terminal_signals(void);
/// fork + execve with `keep` descriptors inherited (FD_CLOEXEC cleared in the child) and an
/// empty signal mask. Returns the child's pid, or -1 with errno set.
int cutover_spawn(const char *path, char *const argv[], char *const envp[], const int *keep, int keep_count);
/// waitpid(pid, status, WNOHANG).
int cutover_wait_nohang(int pid, int *status);
/// The exit code of a wait status (128 + signal for a signal).
int cutover_exit_code(int status);
/// flock(LOCK_EX) and flock(LOCK_UN): 0, or -1 with errno set.
int cutover_lock_exclusive(int fd);
int cutover_unlock(int fd);
/// pipe2(fds, O_CLOEXEC).
int cutover_pipe_cloexec(int fds[2]);

#endif

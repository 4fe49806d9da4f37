#define _GNU_SOURCE
#include <errno.h>
#include <sys/socket.h>
#include <time.h>
#include "CCutoverSys.h"

int cutover_accept4(int fd, void *address, unsigned int *length, int flags) {
    return accept4(fd, (struct sockaddr *)address, (socklen_t *)length, flags);
}

int cutover_errno(void) { return errno; }

int cutover_peer_credentials(int fd, unsigned int *uid, int *pid) {
    struct ucred credentials;
    socklen_t length = sizeof credentials;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &credentials, &length) != 0) return -1;
    *uid = credentials.uid;
    *pid = credentials.pid;
    return 0;
}

long long cutover_monotonic_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

long long cutover_monotonic_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

long long cutover_realtime_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

// `cutover top`: the terminal's size, and the signals it reacts to (a resize, a stop) noted
// by a handler that only sets a flag; poll(2) in the key loop returns EINTR and the loop reads
// the flags.
#include <signal.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <unistd.h>

static volatile sig_atomic_t cutover_pending_signals;

static void cutover_note_signal(int signal) {
    cutover_pending_signals |= (signal == SIGWINCH) ? 1 : 2;
}

int cutover_terminal_size(int fd, unsigned short *rows, unsigned short *columns) {
    struct winsize size;
    if (ioctl(fd, TIOCGWINSZ, &size) != 0) return -1;
    *rows = size.ws_row;
    *columns = size.ws_col;
    return 0;
}

void cutover_watch_terminal_signals(void) {
    struct sigaction action;
    action.sa_handler = cutover_note_signal;
    sigemptyset(&action.sa_mask);
    action.sa_flags = 0;  // no SA_RESTART: a waiting poll returns at once
    sigaction(SIGWINCH, &action, 0);
    sigaction(SIGINT, &action, 0);
    sigaction(SIGTERM, &action, 0);
    sigaction(SIGHUP, &action, 0);
}

int cutover_take_terminal_signals(void) {
    int pending = cutover_pending_signals;
    cutover_pending_signals = 0;
    return pending;
}

// Hot upgrade: start the new binary with some descriptors inherited. fork + execve (nothing
// but async-signal-safe calls between them in the child): the chosen descriptors lose
// FD_CLOEXEC in the child only, so no other descriptor leaks into the new process.
#include <fcntl.h>
#include <sys/file.h>
#include <sys/wait.h>

int cutover_spawn(const char *path, char *const argv[], char *const envp[], const int *keep, int keep_count) {
    pid_t pid = fork();
    if (pid != 0) return pid;  // the parent (or -1)
    for (int i = 0; i < keep_count; i++) {
        int flags = fcntl(keep[i], F_GETFD);
        if (flags >= 0) fcntl(keep[i], F_SETFD, flags & ~FD_CLOEXEC);
    }
    // The child starts with no signal blocked and default handlers for the ones we watch:
    // the new process sets up its own.
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, 0);
    execve(path, argv, envp);
    _exit(127);
}

int cutover_wait_nohang(int pid, int *status) {
    return waitpid(pid, status, WNOHANG);
}

int cutover_exit_code(int status) {
    if (WIFEXITED(status)) return WEXITSTATUS(status);
    if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
    return -1;
}

int cutover_lock_exclusive(int fd) { return flock(fd, LOCK_EX); }
int cutover_unlock(int fd) { return flock(fd, LOCK_UN); }

int cutover_pipe_cloexec(int fds[2]) { return pipe2(fds, O_CLOEXEC); }

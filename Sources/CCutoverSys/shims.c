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

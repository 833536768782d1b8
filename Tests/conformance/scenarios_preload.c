/* scenarios_preload.c — readiness through select and epoll, which a program reaches through libc:
 * these run only with --preload (libc's calls on both sides: the kernel's, and the preload
 * library's path to the stack). */
#define _GNU_SOURCE
#include "conformance.h"

#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/select.h>
#include <unistd.h>

/* epoll_wait, recorded with the events sorted by tag (the order of a ready list is not part of
 * what the kernel promises). */
static void rec_epoll(struct ctx *x, const char *label, int ep, int timeout) {
    struct epoll_event ev[8];
    errno = 0;
    int n = epoll_wait(ep, ev, 8, timeout);
    if (n < 0) { rec_rc(label, -1, errno); return; }
    for (int i = 1; i < n; i++)
        for (int k = i; k > 0 && ev[k - 1].data.u32 > ev[k].data.u32; k--) {
            struct epoll_event t = ev[k];
            ev[k] = ev[k - 1];
            ev[k - 1] = t;
        }
    char text[256];
    size_t used = (size_t)snprintf(text, sizeof text, "%d", n);
    for (int i = 0; i < n && used < sizeof text; i++)
        used += (size_t)snprintf(text + used, sizeof text - used, " [%u]=0x%x", (unsigned)ev[i].data.u32, (unsigned)ev[i].events);
    rec_note(label, "%s", text);
}

static void rec_select(struct ctx *x, const char *label, int nfds, int *fds, int count, int want_write, int timeout_ms) {
    fd_set r, w;
    FD_ZERO(&r);
    FD_ZERO(&w);
    for (int i = 0; i < count; i++) {
        FD_SET(fds[i], &r);
        if (want_write) FD_SET(fds[i], &w);
    }
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    errno = 0;
    int n = select(nfds, &r, want_write ? &w : NULL, NULL, &tv);
    if (n < 0) { rec_rc(label, -1, errno); return; }
    char text[128];
    size_t used = (size_t)snprintf(text, sizeof text, "%d", n);
    for (int i = 0; i < count; i++)
        used += (size_t)snprintf(text + used, sizeof text - used, " [%d]%s%s", i, FD_ISSET(fds[i], &r) ? "r" : "", want_write && FD_ISSET(fds[i], &w) ? "w" : "");
    rec_note(label, "%s", text);
}

static void select_tcp(struct ctx *x) {
    int l, c, s;
    tcp_pair(x, &l, &c, &s);
    int p[2];
    RC("pipe", pipe(p));
    int fds[3] = {s, p[0], c};
    int nfds = 1 + (s > p[0] ? (s > c ? s : c) : (p[0] > c ? p[0] : c));
    rec_select(x, "idle, read and write", nfds, fds, 3, 1, 0);
    rec_select(x, "idle, read, 100 ms", nfds, fds, 3, 0, 100);
    RC("send", x->c->send(c, "abc", 3, 0));
    RC("pipe write", write(p[1], "p", 1));
    wait_mask(x, "server has data", s, POLLIN, POLLIN, 2000);
    rec_select(x, "data and pipe", nfds, fds, 3, 0, 1000);
    RC("recv", x->c->recv(s, (char[8]){0}, 8, 0));
    RC("client SHUT_WR", x->c->shutdown(c, SHUT_WR));
    wait_mask(x, "server sees FIN", s, POLLIN, POLLIN | POLLRDHUP, 2000);
    rec_select(x, "EOF is readable", nfds, fds, 3, 0, 1000);
    x->c->close(c);
    x->c->close(s);
    x->c->close(l);
    close(p[0]);
    close(p[1]);
}

static int epoll_add(struct ctx *x, const char *label, int ep, int fd, uint32_t events, uint32_t tag) {
    struct epoll_event ev = {.events = events, .data.u32 = tag};
    return (int)RC(label, epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev));
}

static void epoll_level(struct ctx *x) {
    int l, c, s;
    tcp_pair(x, &l, &c, &s);
    int ep = FD("epoll_create1", epoll_create1(EPOLL_CLOEXEC));
    epoll_add(x, "add server IN|RDHUP", ep, s, EPOLLIN | EPOLLRDHUP, 1);
    epoll_add(x, "add listener IN", ep, l, EPOLLIN, 2);
    epoll_add(x, "add server again", ep, s, EPOLLIN, 1);
    rec_epoll(x, "idle", ep, 50);
    RC("send", x->c->send(c, "abc", 3, 0));
    rec_epoll(x, "data", ep, 2000);
    rec_epoll(x, "data, level-triggered again", ep, 0);
    RC("recv", x->c->recv(s, (char[8]){0}, 8, 0));
    rec_epoll(x, "drained", ep, 50);
    int c2 = FD("second client", x->c->socket(x->family, SOCK_STREAM, 0));
    struct sockaddr_storage ss;
    socklen_t len = loopback(x, 0, x->port[0], &ss);
    RC("connect", x->c->connect(c2, (void *)&ss, len));
    rec_epoll(x, "listener has a connection", ep, 2000);
    RC("client closes", x->c->close(c));
    wait_mask(x, "server sees FIN", s, POLLIN | POLLRDHUP, POLLRDHUP, 2000);
    rec_epoll(x, "EOF", ep, 2000);
    struct epoll_event mod = {.events = EPOLLOUT, .data.u32 = 3};
    RC("mod to OUT", epoll_ctl(ep, EPOLL_CTL_MOD, s, &mod));
    RC("del listener", epoll_ctl(ep, EPOLL_CTL_DEL, l, NULL));
    RC("del listener again", epoll_ctl(ep, EPOLL_CTL_DEL, l, NULL));
    rec_epoll(x, "after mod", ep, 100);
    close(ep);
    x->c->close(c2);
    x->c->close(s);
    x->c->close(l);
}

static void epoll_edge_oneshot(struct ctx *x) {
    int l, c, s;
    tcp_pair(x, &l, &c, &s);
    int ep = FD("epoll_create1", epoll_create1(0));
    epoll_add(x, "add server IN|ET", ep, s, EPOLLIN | EPOLLET, 1);
    epoll_add(x, "add client IN|ONESHOT", ep, c, EPOLLIN | EPOLLONESHOT, 2);
    RC("send to server", x->c->send(c, "abc", 3, 0));
    RC("send to client", x->c->send(s, "xyz", 3, 0));
    wait_mask(x, "client has data", c, POLLIN, POLLIN, 2000);
    wait_mask(x, "server has data", s, POLLIN, POLLIN, 2000);
    rec_epoll(x, "both", ep, 2000);
    rec_epoll(x, "nothing new", ep, 100);
    RC("more to server", x->c->send(c, "d", 1, 0));
    rec_epoll(x, "new data: the edge again", ep, 2000);
    struct epoll_event rearm = {.events = EPOLLIN | EPOLLONESHOT, .data.u32 = 2};
    RC("rearm client", epoll_ctl(ep, EPOLL_CTL_MOD, c, &rearm));
    rec_epoll(x, "rearmed: client again", ep, 2000);
    close(ep);
    x->c->close(c);
    x->c->close(s);
    x->c->close(l);
}

static void epoll_udp_and_pipe(struct ctx *x) {
    int a = udp_bound(x, 0);
    int b = udp_bound(x, 1);
    int p[2];
    RC("pipe", pipe(p));
    int ep = FD("epoll_create1", epoll_create1(0));
    epoll_add(x, "add udp", ep, a, EPOLLIN, 1);
    epoll_add(x, "add pipe", ep, p[0], EPOLLIN, 2);
    rec_epoll(x, "idle", ep, 50);
    struct sockaddr_storage ss;
    socklen_t len = loopback(x, 0, x->port[0], &ss);
    RC("sendto", x->c->sendto(b, "dgram", 5, 0, (void *)&ss, len));
    rec_epoll(x, "datagram", ep, 2000);
    RC("recv", x->c->recv(a, (char[8]){0}, 8, 0));
    RC("pipe write", write(p[1], "p", 1));
    rec_epoll(x, "pipe", ep, 2000);
    close(ep);
    close(p[0]);
    close(p[1]);
    x->c->close(a);
    x->c->close(b);
}

static void dup_and_close(struct ctx *x) {
    int l, c, s;
    tcp_pair(x, &l, &c, &s);
    int d = FD("dup", dup(c));
    RC("close the original", x->c->close(c));
    RC("send through the dup", x->c->send(d, "dup", 3, 0));
    wait_mask(x, "server mask", s, POLLIN, POLLIN, 2000);
    RC("recv", x->c->recv(s, (char[8]){0}, 8, 0));
    poll_mask(x, "server not at EOF while the dup is open", s, POLLIN | POLLRDHUP, 100);
    RC("close the dup", x->c->close(d));
    wait_mask(x, "server sees FIN", s, POLLIN | POLLRDHUP, POLLRDHUP, 2000);
    RC("recv EOF", x->c->recv(s, (char[8]){0}, 8, 0));
    int e = FD("fcntl F_DUPFD", x->c->fcntl(s, F_DUPFD, 100));
    rec_note("F_DUPFD at or above 100", "%d", e >= 100);
    RC("close it", x->c->close(e));
    RC("send on the server", x->c->send(s, "x", 1, 0));
    x->c->close(s);
    x->c->close(l);
}

static pthread_t blocked_thread;
static void on_signal(int sig) { (void)sig; }
static void interrupt(void *arg) { (void)arg; pthread_kill(blocked_thread, SIGUSR1); }
struct late_send { struct ctx *x; int fd; };
static void send_late(void *arg) { struct late_send *l = arg; l->x->c->send(l->fd, "sig", 3, 0); }

/* A blocking recv interrupted by a signal: restarted with SA_RESTART, EINTR without (signal(7)),
 * EINTR with SA_RESTART when the socket has SO_RCVTIMEO. */
static void signal_restart(struct ctx *x, int flags, int timeout) {
    int l, c, s;
    tcp_pair(x, &l, &c, &s);
    struct sigaction sa, old;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sa.sa_flags = flags;
    sigemptyset(&sa.sa_mask);
    RC("sigaction SIGUSR1", sigaction(SIGUSR1, &sa, &old));
    if (timeout) {
        struct timeval tv = {5, 0};
        RC("SO_RCVTIMEO 5 s", x->c->setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv));
    }
    blocked_thread = pthread_self();
    struct late_send ls = {x, c};
    void *t1 = later(100, interrupt, NULL);
    void *t2 = later(300, send_late, &ls);
    char buf[8];
    RC("blocking recv, a signal at 100 ms, data at 300 ms", x->c->recv(s, buf, sizeof buf, 0));
    join_later(t1);
    join_later(t2);
    sigaction(SIGUSR1, &old, NULL);
    x->c->close(c);
    x->c->close(s);
    x->c->close(l);
}
/* Each handler's own SA_RESTART decides (SIGUSR2's handler has none; SIGUSR1's has it): a recv
 * interrupted by SIGUSR1 restarts; one interrupted by SIGUSR2 returns EINTR. Also what sigaction
 * and signal report back as the installed handler. */
static void interrupt2(void *arg) { (void)arg; pthread_kill(blocked_thread, SIGUSR2); }
static void signal_restart_per_handler(struct ctx *x) {
    int l, c, s;
    tcp_pair(x, &l, &c, &s);
    struct sigaction restart, plain, old1, old2, now;
    memset(&restart, 0, sizeof restart);
    restart.sa_handler = on_signal;
    restart.sa_flags = SA_RESTART;
    sigemptyset(&restart.sa_mask);
    plain = restart;
    plain.sa_flags = 0;
    RC("sigaction SIGUSR1 with SA_RESTART", sigaction(SIGUSR1, &restart, &old1));
    RC("sigaction SIGUSR2 without", sigaction(SIGUSR2, &plain, &old2));
    RC("sigaction SIGUSR1 reads back", sigaction(SIGUSR1, NULL, &now));
    rec_note("SIGUSR1 handler is ours, flags", "%d 0x%x", now.sa_handler == on_signal, (unsigned)(now.sa_flags & (SA_RESTART | SA_SIGINFO)));
    blocked_thread = pthread_self();
    struct late_send ls = {x, c};
    char buf[8];
    void *t1 = later(100, interrupt, NULL);
    void *t2 = later(300, send_late, &ls);
    RC("recv, SIGUSR1 (SA_RESTART) at 100 ms, data at 300 ms", x->c->recv(s, buf, sizeof buf, 0));
    join_later(t1);
    join_later(t2);
    t1 = later(100, interrupt2, NULL);
    RC("recv, SIGUSR2 (no SA_RESTART) at 100 ms", x->c->recv(s, buf, sizeof buf, 0));
    join_later(t1);
    sighandler_t before = signal(SIGUSR2, on_signal);
    rec_note("signal() returns the previous handler", "%d", before == on_signal);
    sigaction(SIGUSR1, &old1, NULL);
    sigaction(SIGUSR2, &old2, NULL);
    x->c->close(c);
    x->c->close(s);
    x->c->close(l);
}
/* ppoll and pselect apply their mask atomically: a signal pending while blocked, which the mask
 * unblocks, interrupts the wait at once (EINTR), rather than being delivered before it. */
static void ppoll_mask_is_atomic(struct ctx *x) {
    int l, c, s;
    tcp_pair(x, &l, &c, &s);
    struct sigaction sa, old;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    RC("sigaction SIGUSR1", sigaction(SIGUSR1, &sa, &old));
    sigset_t block, saved, open;
    sigemptyset(&block);
    sigaddset(&block, SIGUSR1);
    RC("block SIGUSR1", pthread_sigmask(SIG_BLOCK, &block, &saved));
    sigprocmask(SIG_SETMASK, NULL, &open);
    sigdelset(&open, SIGUSR1);
    RC("raise SIGUSR1 (pending)", pthread_kill(pthread_self(), SIGUSR1));
    struct pollfd p = {s, POLLIN, 0};
    struct timespec t = {0, 200 * 1000 * 1000};
    RC("ppoll unblocking it (200 ms)", ppoll(&p, 1, &t, &open));
    RC("raise SIGUSR1 again", pthread_kill(pthread_self(), SIGUSR1));
    fd_set r;
    FD_ZERO(&r);
    FD_SET(s, &r);
    RC("pselect unblocking it (200 ms)", pselect(s + 1, &r, NULL, NULL, &t, &open));
    pthread_sigmask(SIG_SETMASK, &saved, NULL);
    sigaction(SIGUSR1, &old, NULL);
    x->c->close(c);
    x->c->close(s);
    x->c->close(l);
}
static void signal_sa_restart(struct ctx *x) { signal_restart(x, SA_RESTART, 0); }
static void signal_no_restart(struct ctx *x) { signal_restart(x, 0, 0); }
static void signal_restart_with_timeout(struct ctx *x) { signal_restart(x, SA_RESTART, 1); }

/* A socket closed without EPOLL_CTL_DEL leaves every epoll set (nginx relies on it). */
static void epoll_close_without_del(struct ctx *x) {
    int l, c, s;
    tcp_pair(x, &l, &c, &s);
    int ep = FD("epoll_create1", epoll_create1(0));
    epoll_add(x, "add server", ep, s, EPOLLIN, 1);
    RC("send", x->c->send(c, "abc", 3, 0));
    rec_epoll(x, "data", ep, 2000);
    RC("close the server socket (no EPOLL_CTL_DEL)", x->c->close(s));
    rec_epoll(x, "the set is empty", ep, 100);
    struct epoll_event ev = {.events = EPOLLIN};
    RC("epoll_ctl on a descriptor that is not an epoll set", epoll_ctl(c, EPOLL_CTL_ADD, c, &ev));
    close(ep);
    x->c->close(c);
    x->c->close(l);
}

/* EPOLLET after the reader emptied the socket (EAGAIN): the next data is an edge, even when it is
 * no more than what was there at the last look. */
static void epoll_edge_after_drain(struct ctx *x) {
    int l, c, s;
    tcp_pair(x, &l, &c, &s);
    RC("O_NONBLOCK", x->c->fcntl(s, F_SETFL, O_NONBLOCK));
    int ep = FD("epoll_create1", epoll_create1(0));
    epoll_add(x, "add server IN|ET", ep, s, EPOLLIN | EPOLLET, 1);
    RC("send 4", x->c->send(c, "abcd", 4, 0));
    rec_epoll(x, "first edge", ep, 2000);
    RC("read 4", x->c->recv(s, (char[8]){0}, 8, 0));
    RC("read until EAGAIN", x->c->recv(s, (char[8]){0}, 8, 0));
    RC("send 2", x->c->send(c, "ef", 2, 0));
    rec_epoll(x, "an edge for less than before", ep, 2000);
    close(ep);
    x->c->close(c);
    x->c->close(s);
    x->c->close(l);
}

/* An epoll set inside another: the outer one sees the inner one readable when the inner one has an
 * event; a set cannot contain itself through another (ELOOP). */
static void epoll_nested(struct ctx *x) {
    int l, c, s;
    tcp_pair(x, &l, &c, &s);
    int inner = FD("inner epoll", epoll_create1(0));
    int outer = FD("outer epoll", epoll_create1(0));
    epoll_add(x, "inner: add server IN", inner, s, EPOLLIN, 1);
    epoll_add(x, "outer: add inner IN", outer, inner, EPOLLIN, 7);
    rec_epoll(x, "outer idle", outer, 50);
    RC("send", x->c->send(c, "abc", 3, 0));
    rec_epoll(x, "outer: the inner set is ready", outer, 2000);
    rec_epoll(x, "inner: the server", inner, 0);
    RC("recv", x->c->recv(s, (char[8]){0}, 8, 0));
    rec_epoll(x, "outer after the drain", outer, 50);
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = 8};
    RC("inner: add outer (a loop)", epoll_ctl(inner, EPOLL_CTL_ADD, outer, &ev));
    RC("outer: del inner", epoll_ctl(outer, EPOLL_CTL_DEL, inner, NULL));
    RC("send again", x->c->send(c, "d", 1, 0));
    wait_mask(x, "server has data", s, POLLIN, POLLIN, 2000);
    rec_epoll(x, "outer without the inner set", outer, 50);
    close(outer);
    close(inner);
    x->c->close(c);
    x->c->close(s);
    x->c->close(l);
}

/* epoll_pwait2: a timespec timeout. */
static void epoll_pwait2_timeout(struct ctx *x) {
    int l, c, s;
    tcp_pair(x, &l, &c, &s);
    int ep = FD("epoll_create1", epoll_create1(0));
    epoll_add(x, "add server IN", ep, s, EPOLLIN, 1);
    struct epoll_event ev[4];
    struct timespec fifty = {0, 50 * 1000 * 1000}, two = {2, 0};
    RC("epoll_pwait2 idle (50 ms)", epoll_pwait2(ep, ev, 4, &fifty, NULL));
    RC("send", x->c->send(c, "abc", 3, 0));
    int n = (int)RC("epoll_pwait2 with data", epoll_pwait2(ep, ev, 4, &two, NULL));
    if (n == 1) rec_note("event", "tag %u events 0x%x", ev[0].data.u32, ev[0].events);
    struct timespec bad = {0, 1000000000L};
    RC("epoll_pwait2 with tv_nsec 10^9", epoll_pwait2(ep, ev, 4, &bad, NULL));
    close(ep);
    x->c->close(c);
    x->c->close(s);
    x->c->close(l);
}

static volatile sig_atomic_t pipe_signals;
static void on_sigpipe(int sig) { (void)sig; pipe_signals++; }

/* Writing to a connection that cannot send raises SIGPIPE (unless MSG_NOSIGNAL). */
static void sigpipe_on_write(struct ctx *x) {
    int l, c, s;
    tcp_pair(x, &l, &c, &s);
    struct sigaction sa, old;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigpipe;
    sigemptyset(&sa.sa_mask);
    RC("sigaction SIGPIPE", sigaction(SIGPIPE, &sa, &old));
    pipe_signals = 0;
    RC("SHUT_WR", x->c->shutdown(c, SHUT_WR));
    RC("send after SHUT_WR", x->c->send(c, "x", 1, 0));
    rec_note("SIGPIPE raised", "%d", (int)pipe_signals);
    RC("send with MSG_NOSIGNAL", x->c->send(c, "x", 1, MSG_NOSIGNAL));
    rec_note("SIGPIPE raised", "%d", (int)pipe_signals);
    RC("write after SHUT_WR", write(c, "x", 1));
    rec_note("SIGPIPE raised", "%d", (int)pipe_signals);
    sigaction(SIGPIPE, &old, NULL);
    x->c->close(c);
    x->c->close(s);
    x->c->close(l);
}

const struct scenario preload_scenarios[] = {
    {"preload_select_tcp", select_tcp, FAM_BOTH | PRELOAD_ONLY},
    {"preload_epoll_level", epoll_level, FAM_BOTH | PRELOAD_ONLY},
    {"preload_epoll_edge_oneshot", epoll_edge_oneshot, FAM_BOTH | PRELOAD_ONLY},
    {"preload_epoll_udp_and_pipe", epoll_udp_and_pipe, FAM_BOTH | PRELOAD_ONLY},
    {"preload_dup_and_close", dup_and_close, FAM_BOTH | PRELOAD_ONLY},
    {"preload_epoll_close_without_del", epoll_close_without_del, FAM_BOTH | PRELOAD_ONLY},
    {"preload_epoll_edge_after_drain", epoll_edge_after_drain, FAM_BOTH | PRELOAD_ONLY},
    {"preload_sigpipe_on_write", sigpipe_on_write, FAM_BOTH | PRELOAD_ONLY},
    {"preload_epoll_nested", epoll_nested, FAM_BOTH | PRELOAD_ONLY},
    {"preload_epoll_pwait2", epoll_pwait2_timeout, FAM_BOTH | PRELOAD_ONLY},
    {"preload_signal_sa_restart", signal_sa_restart, FAM_V4 | PRELOAD_ONLY},
    {"preload_signal_no_restart", signal_no_restart, FAM_V4 | PRELOAD_ONLY},
    {"preload_signal_restart_with_timeout", signal_restart_with_timeout, FAM_V4 | PRELOAD_ONLY},
    {"preload_signal_restart_per_handler", signal_restart_per_handler, FAM_V4 | PRELOAD_ONLY},
    {"preload_ppoll_mask_is_atomic", ppoll_mask_is_atomic, FAM_V4 | PRELOAD_ONLY},
    {0, 0, 0},
};

/* scenarios_misc.c — socket(2), errnos and options common to both protocols. */
#define _GNU_SOURCE
#include "conformance.h"

#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#define IO (POLLIN | POLLOUT | POLLRDHUP | POLLRDNORM | POLLWRNORM)

/* Closes fd when the call that made it succeeded (a socket the kernel might unexpectedly create). */
static void close_if(struct ctx *x, int fd) {
    if (fd >= 0) x->c->close(fd);
}

static void revents_text(short m, char *out, size_t size) {
    static const struct { short bit; const char *name; } names[] = {
        {POLLIN, "IN"}, {POLLPRI, "PRI"}, {POLLOUT, "OUT"}, {POLLERR, "ERR"}, {POLLHUP, "HUP"},
        {POLLNVAL, "NVAL"}, {POLLRDNORM, "RDNORM"}, {POLLWRNORM, "WRNORM"}, {POLLRDHUP, "RDHUP"},
    };
    size_t n = 0;
    out[0] = 0;
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (m & names[i].bit) n += (size_t)snprintf(out + n, size - n, "%s%s", n ? "|" : "", names[i].name);
    if (n == 0) snprintf(out, size, "0");
}

/* poll on several descriptors, recording the count and every revents. */
static void poll_many(struct ctx *x, const char *label, struct pollfd *p, int n, int timeout) {
    for (int i = 0; i < n; i++) p[i].revents = 0;
    long rc = RC(label, x->c->poll(p, (unsigned long)n, timeout));
    if (rc < 0) return;
    char line[256], m[96];
    size_t used = 0;
    line[0] = 0;
    for (int i = 0; i < n; i++) {
        revents_text(p[i].revents, m, sizeof m);
        used += (size_t)snprintf(line + used, sizeof line - used, "%s[%d] %s", i ? " " : "", i, m);
    }
    rec_note("  revents", "%s", line);
}

static void fl_note(struct ctx *x, const char *label, int fd) {
    errno = 0;
    int v = x->c->fcntl(fd, F_GETFL, 0);
    if (v < 0) { rec_rc(label, -1, errno); return; }
    rec_note(label, "accmode=%d nonblock=%d", v & O_ACCMODE, (v & O_NONBLOCK) != 0);
}

static void fd_note(struct ctx *x, const char *label, int fd) {
    errno = 0;
    int v = x->c->fcntl(fd, F_GETFD, 0);
    if (v < 0) { rec_rc(label, -1, errno); return; }
    rec_note(label, "cloexec=%d", (v & FD_CLOEXEC) != 0);
}

/* ---------------- socket(2) ---------------- */

static void socket_bad_domain(struct ctx *x) {
    close_if(x, FD("socket domain 9999", x->c->socket(9999, SOCK_DGRAM, 0)));
    close_if(x, FD("socket domain -1", x->c->socket(-1, SOCK_STREAM, 0)));
    close_if(x, FD("socket AF_UNSPEC", x->c->socket(AF_UNSPEC, SOCK_DGRAM, 0)));
    close_if(x, FD("socket domain 200 (beyond AF_MAX)", x->c->socket(200, SOCK_STREAM, 0)));
}

static void socket_bad_type(struct ctx *x) {
    close_if(x, FD("socket type 99", x->c->socket(x->family, 99, 0)));
    close_if(x, FD("socket type 0", x->c->socket(x->family, 0, 0)));
    close_if(x, FD("socket type -1", x->c->socket(x->family, -1, 0)));
    close_if(x, FD("socket unknown flag in the type", x->c->socket(x->family, SOCK_DGRAM | 0x40000000, 0)));
    close_if(x, FD("socket unknown flag in the type (stream)", x->c->socket(x->family, SOCK_STREAM | 0x100000, 0)));
}

static void socket_protocols(struct ctx *x) {
    close_if(x, FD("SOCK_STREAM with IPPROTO_UDP", x->c->socket(x->family, SOCK_STREAM, IPPROTO_UDP)));
    close_if(x, FD("SOCK_DGRAM with IPPROTO_TCP", x->c->socket(x->family, SOCK_DGRAM, IPPROTO_TCP)));
    close_if(x, FD("SOCK_DGRAM with protocol 200", x->c->socket(x->family, SOCK_DGRAM, 200)));
    close_if(x, FD("SOCK_DGRAM with protocol -1", x->c->socket(x->family, SOCK_DGRAM, -1)));
    close_if(x, FD("SOCK_DGRAM with protocol 300", x->c->socket(x->family, SOCK_DGRAM, 300)));
    int u = FD("SOCK_DGRAM with IPPROTO_UDP", x->c->socket(x->family, SOCK_DGRAM, IPPROTO_UDP));
    if (u >= 0) rec_intopt(x, "  SO_PROTOCOL", u, SOL_SOCKET, SO_PROTOCOL);
    close_if(x, u);
    int t = FD("SOCK_STREAM with IPPROTO_TCP", x->c->socket(x->family, SOCK_STREAM, IPPROTO_TCP));
    if (t >= 0) rec_intopt(x, "  SO_PROTOCOL", t, SOL_SOCKET, SO_PROTOCOL);
    close_if(x, t);
}

static void socket_seqpacket(struct ctx *x) {
    close_if(x, FD("SOCK_SEQPACKET", x->c->socket(x->family, SOCK_SEQPACKET, 0)));
    close_if(x, FD("SOCK_RDM", x->c->socket(x->family, SOCK_RDM, 0)));
    close_if(x, FD("SOCK_DCCP", x->c->socket(x->family, SOCK_DCCP, 0)));
}

static void socket_flags(struct ctx *x) {
    int types[2] = {SOCK_DGRAM, SOCK_STREAM};
    for (int i = 0; i < 2; i++) {
        int plain = FD(i ? "TCP socket" : "UDP socket", x->c->socket(x->family, types[i], 0));
        fl_note(x, "  F_GETFL", plain);
        fd_note(x, "  F_GETFD", plain);
        int nb = FD("  with SOCK_NONBLOCK", x->c->socket(x->family, types[i] | SOCK_NONBLOCK, 0));
        fl_note(x, "  F_GETFL", nb);
        fd_note(x, "  F_GETFD", nb);
        RC("  recv on it", x->c->recv(nb, (char[4]){0}, 4, 0));
        int ce = FD("  with SOCK_CLOEXEC", x->c->socket(x->family, types[i] | SOCK_CLOEXEC, 0));
        fl_note(x, "  F_GETFL", ce);
        fd_note(x, "  F_GETFD", ce);
        int both = FD("  with both", x->c->socket(x->family, types[i] | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
        fl_note(x, "  F_GETFL", both);
        fd_note(x, "  F_GETFD", both);
        rec_intopt(x, "  SO_TYPE (flags not included)", both, SOL_SOCKET, SO_TYPE);
        x->c->close(plain);
        x->c->close(nb);
        x->c->close(ce);
        x->c->close(both);
    }
}

/* ---------------- descriptors ---------------- */

static void closed_descriptor(struct ctx *x) {
    int s = FD("socket", x->c->socket(x->family, SOCK_DGRAM, 0));
    RC("close", x->c->close(s));
    struct sockaddr_storage ss;
    socklen_t len = loopback(x, 0, x->port[0], &ss);
    char buf[4];
    int v = 1;
    socklen_t vlen = sizeof v;
    RC("send", x->c->send(s, "x", 1, 0));
    RC("sendto", x->c->sendto(s, "x", 1, 0, (void *)&ss, len));
    RC("recv", x->c->recv(s, buf, sizeof buf, MSG_DONTWAIT));
    RC("read", x->c->read(s, buf, sizeof buf));
    RC("write", x->c->write(s, "x", 1));
    RC("bind", x->c->bind(s, (void *)&ss, len));
    RC("connect", x->c->connect(s, (void *)&ss, len));
    RC("listen", x->c->listen(s, 1));
    RC("getsockopt", x->c->getsockopt(s, SOL_SOCKET, SO_TYPE, &v, &vlen));
    RC("setsockopt", x->c->setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &v, sizeof v));
    rec_sockname(x, "getsockname", s);
    rec_peername(x, "getpeername", s);
    RC("shutdown", x->c->shutdown(s, SHUT_RDWR));
    RC("fcntl F_GETFL", x->c->fcntl(s, F_GETFL, 0));
    int n = 0;
    RC("ioctl FIONREAD", x->c->ioctl(s, FIONREAD, &n));
    struct pollfd p = {s, IO, 0};
    poll_many(x, "poll", &p, 1, 0);
    RC("close again", x->c->close(s));
}

static void close_twice(struct ctx *x) {
    int u = FD("UDP socket", x->c->socket(x->family, SOCK_DGRAM, 0));
    RC("close", x->c->close(u));
    RC("close again", x->c->close(u));
    int l = tcp_listener(x, 0, 4);
    RC("close listener", x->c->close(l));
    RC("close listener again", x->c->close(l));
    RC("close -1", x->c->close(-1));
}

static void invalid_descriptors(struct ctx *x) {
    char buf[4];
    int v = 0;
    socklen_t vlen = sizeof v;
    RC("send on -1", x->c->send(-1, "x", 1, 0));
    RC("recv on -1", x->c->recv(-1, buf, sizeof buf, MSG_DONTWAIT));
    RC("getsockopt on -1", x->c->getsockopt(-1, SOL_SOCKET, SO_TYPE, &v, &vlen));
    RC("shutdown on 9999", x->c->shutdown(9999, SHUT_RDWR));
    RC("fcntl on 9999", x->c->fcntl(9999, F_GETFL, 0));
    int pfd[2];
    if (pipe(pfd) < 0) { rec_note("pipe", "failed"); return; }
    struct sockaddr_storage ss;
    socklen_t len = loopback(x, 0, x->port[0], &ss);
    RC("send on a pipe", x->c->send(pfd[1], "x", 1, 0));
    RC("recv on a pipe", x->c->recv(pfd[0], buf, sizeof buf, MSG_DONTWAIT));
    RC("bind on a pipe", x->c->bind(pfd[0], (void *)&ss, len));
    RC("connect on a pipe", x->c->connect(pfd[0], (void *)&ss, len));
    vlen = sizeof v;
    RC("getsockopt on a pipe", x->c->getsockopt(pfd[0], SOL_SOCKET, SO_TYPE, &v, &vlen));
    RC("shutdown on a pipe", x->c->shutdown(pfd[0], SHUT_RD));
    rec_sockname(x, "getsockname on a pipe", pfd[0]);
    close(pfd[0]);
    close(pfd[1]);
}

/* ---------------- getsockopt/setsockopt lengths ---------------- */

static void option_lengths(struct ctx *x) {
    int s = FD("UDP socket", x->c->socket(x->family, SOCK_DGRAM, 0));
    unsigned char b[16];
    socklen_t len;
    memset(b, 0xee, sizeof b);
    len = 2;
    RC("getsockopt SO_TYPE into 2 bytes", x->c->getsockopt(s, SOL_SOCKET, SO_TYPE, b, &len));
    rec_note("  got", "len=%u bytes=%02x %02x %02x", (unsigned)len, b[0], b[1], b[2]);
    len = 0;
    RC("getsockopt SO_TYPE into 0 bytes", x->c->getsockopt(s, SOL_SOCKET, SO_TYPE, b, &len));
    rec_note("  got", "len=%u", (unsigned)len);
    len = 16;
    RC("getsockopt SO_TYPE into 16 bytes", x->c->getsockopt(s, SOL_SOCKET, SO_TYPE, b, &len));
    rec_note("  got", "len=%u", (unsigned)len);
    len = (socklen_t)-1;
    RC("getsockopt SO_TYPE with a negative length", x->c->getsockopt(s, SOL_SOCKET, SO_TYPE, b, &len));
    len = 1;
    RC("getsockopt SO_ERROR into 1 byte", x->c->getsockopt(s, SOL_SOCKET, SO_ERROR, b, &len));
    rec_note("  got", "len=%u", (unsigned)len);
    struct linger lg;
    len = 4;
    RC("getsockopt SO_LINGER into 4 bytes", x->c->getsockopt(s, SOL_SOCKET, SO_LINGER, &lg, &len));
    rec_note("  got", "len=%u", (unsigned)len);
    int one = 1;
    RC("setsockopt SO_REUSEADDR length 0", x->c->setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, 0));
    RC("setsockopt SO_REUSEADDR length 3", x->c->setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, 3));
    long long big = 1;
    RC("setsockopt SO_REUSEADDR length 8", x->c->setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &big, sizeof big));
    rec_intopt(x, "  SO_REUSEADDR", s, SOL_SOCKET, SO_REUSEADDR);
    struct linger on = {1, 5};
    RC("setsockopt SO_LINGER short", x->c->setsockopt(s, SOL_SOCKET, SO_LINGER, &on, 4));
    RC("setsockopt SO_LINGER", x->c->setsockopt(s, SOL_SOCKET, SO_LINGER, &on, sizeof on));
    len = sizeof lg;
    memset(&lg, 0, sizeof lg);
    RC("getsockopt SO_LINGER", x->c->getsockopt(s, SOL_SOCKET, SO_LINGER, &lg, &len));
    rec_note("  got", "%d %d len=%u", lg.l_onoff, lg.l_linger, (unsigned)len);
    x->c->close(s);
}

static void option_common(struct ctx *x) {
    int u = FD("UDP socket", x->c->socket(x->family, SOCK_DGRAM, 0));
    int t = FD("TCP socket", x->c->socket(x->family, SOCK_STREAM, 0));
    int fds[2] = {u, t};
    for (int i = 0; i < 2; i++) {
        rec_intopt(x, "SO_TYPE", fds[i], SOL_SOCKET, SO_TYPE);
        rec_intopt(x, "SO_DOMAIN", fds[i], SOL_SOCKET, SO_DOMAIN);
        rec_intopt(x, "SO_PROTOCOL", fds[i], SOL_SOCKET, SO_PROTOCOL);
        rec_intopt(x, "SO_RCVLOWAT", fds[i], SOL_SOCKET, SO_RCVLOWAT);
        rec_intopt(x, "SO_ERROR", fds[i], SOL_SOCKET, SO_ERROR);
        int v = -1;
        socklen_t len = sizeof v;
        errno = 0;
        long rc = x->c->getsockopt(fds[i], SOL_SOCKET, SO_RCVBUF, &v, &len);
        rec_note("SO_RCVBUF positive", "%ld %d", rc, v > 0);
        len = sizeof v;
        rc = x->c->getsockopt(fds[i], SOL_SOCKET, SO_SNDBUF, &v, &len);
        rec_note("SO_SNDBUF positive", "%ld %d", rc, v > 0);
        set_intopt(x, "SO_DOMAIN is read-only", fds[i], SOL_SOCKET, SO_DOMAIN, AF_INET);
        set_intopt(x, "SO_PROTOCOL is read-only", fds[i], SOL_SOCKET, SO_PROTOCOL, 0);
        set_intopt(x, "SO_ERROR is read-only", fds[i], SOL_SOCKET, SO_ERROR, 0);
    }
    x->c->close(u);
    x->c->close(t);
}

/* ---------------- fcntl and ioctl ---------------- */

static void fcntl_flags(struct ctx *x) {
    int s = FD("socket", x->c->socket(x->family, SOCK_DGRAM, 0));
    fl_note(x, "F_GETFL", s);
    fd_note(x, "F_GETFD", s);
    RC("F_SETFL O_NONBLOCK", x->c->fcntl(s, F_SETFL, O_NONBLOCK));
    fl_note(x, "F_GETFL after", s);
    RC("recv", x->c->recv(s, (char[4]){0}, 4, 0));
    RC("F_SETFL 0", x->c->fcntl(s, F_SETFL, 0));
    fl_note(x, "F_GETFL after clearing", s);
    RC("F_SETFL O_NONBLOCK|O_RDONLY (access mode ignored)", x->c->fcntl(s, F_SETFL, O_NONBLOCK | O_RDONLY));
    fl_note(x, "F_GETFL after", s);
    int c = FD("SOCK_CLOEXEC socket", x->c->socket(x->family, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    fd_note(x, "F_GETFD", c);
    RC("unknown fcntl command", x->c->fcntl(s, 9999, 0));
    x->c->close(s);
    x->c->close(c);
}

static void ioctl_requests(struct ctx *x) {
    int u = FD("UDP socket", x->c->socket(x->family, SOCK_DGRAM, 0));
    int t = FD("TCP socket", x->c->socket(x->family, SOCK_STREAM, 0));
    int n = -1;
    RC("unknown request on UDP", x->c->ioctl(u, 0x89ab1234, &n));
    RC("unknown request on TCP", x->c->ioctl(t, 0x5499, &n));
    n = -1;
    RC("FIONREAD on a fresh UDP socket", x->c->ioctl(u, FIONREAD, &n));
    rec_note("  value", "%d", n);
    n = -1;
    RC("FIONREAD on a fresh TCP socket", x->c->ioctl(t, FIONREAD, &n));
    rec_note("  value", "%d", n);
    int l = tcp_listener(x, 0, 4);
    RC("FIONREAD on a listener", x->c->ioctl(l, FIONREAD, &n));
    RC("FIONBIO 1", x->c->ioctl(u, FIONBIO, &(int){1}));
    fl_note(x, "F_GETFL after FIONBIO 1", u);
    RC("FIONBIO 0", x->c->ioctl(u, FIONBIO, &(int){0}));
    fl_note(x, "F_GETFL after FIONBIO 0", u);
    x->c->close(u);
    x->c->close(t);
    x->c->close(l);
}

/* ---------------- poll with other descriptors ---------------- */

struct pipe_writer { int fd; };
static void write_pipe(void *p) {
    struct pipe_writer *w = p;
    ssize_t r = write(w->fd, "p", 1);
    (void)r;
}

static void poll_mixed(struct ctx *x) {
    int pfd[2];
    if (pipe(pfd) < 0) { rec_note("pipe", "failed"); return; }
    int s = FD("socket", x->c->socket(x->family, SOCK_DGRAM, 0));
    struct sockaddr_storage ss;
    socklen_t len = loopback(x, 0, x->port[0], &ss);
    RC("bind", x->c->bind(s, (void *)&ss, len));
    struct pollfd p[4] = {{s, IO, 0}, {pfd[0], POLLIN, 0}, {pfd[1], POLLOUT, 0}, {-1, POLLIN, 0}};
    poll_many(x, "poll socket, pipe ends, -1", p, 4, 0);
    ssize_t w = write(pfd[1], "abc", 3);
    rec_note("write to the pipe", "%zd", w);
    poll_many(x, "poll after the pipe write", p, 4, 0);
    RC("sendto self", x->c->sendto(s, "s", 1, 0, (void *)&ss, len));
    wait_mask(x, "socket mask", s, IO, POLLIN, 2000);
    poll_many(x, "poll with both readable", p, 4, 0);
    char buf[8];
    ssize_t r = read(pfd[0], buf, sizeof buf);
    rec_note("read the pipe", "%zd", r);
    RC("recv the socket", x->c->recv(s, buf, sizeof buf, MSG_DONTWAIT));
    struct pollfd q[2] = {{s, POLLIN, 0}, {pfd[0], POLLIN, 0}};
    struct pipe_writer pw = {pfd[1]};
    void *t = later(100, write_pipe, &pw);
    poll_many(x, "blocking poll woken by the pipe", q, 2, 3000);
    join_later(t);
    r = read(pfd[0], buf, sizeof buf);
    rec_note("read the pipe", "%zd", r);
    close(pfd[1]);
    poll_many(x, "poll after the write end closed", q, 2, 0);
    RC("poll no descriptors", x->c->poll(NULL, 0, 10));
    close(pfd[0]);
    x->c->close(s);
}

static void poll_nval(struct ctx *x) {
    int s = FD("socket", x->c->socket(x->family, SOCK_DGRAM, 0));
    int gone = FD("another socket", x->c->socket(x->family, SOCK_DGRAM, 0));
    RC("close it", x->c->close(gone));
    struct pollfd p[2] = {{s, IO, 0}, {gone, IO, 0}};
    poll_many(x, "poll a live and a closed socket", p, 2, 0);
    struct pollfd q[1] = {{s, 0, 0}};
    poll_many(x, "poll with no events", q, 1, 0);
    x->c->close(s);
}

const struct scenario misc_scenarios[] = {
    {"sock_socket_bad_domain", socket_bad_domain, FAM_V4},
    {"sock_socket_bad_type", socket_bad_type, FAM_BOTH},
    {"sock_socket_protocols", socket_protocols, FAM_BOTH},
    {"sock_socket_seqpacket", socket_seqpacket, FAM_BOTH},
    {"sock_socket_flags", socket_flags, FAM_BOTH},
    {"sock_closed_descriptor", closed_descriptor, FAM_V4},
    {"sock_close_twice", close_twice, FAM_V4},
    {"sock_invalid_descriptors", invalid_descriptors, FAM_V4},
    {"sock_option_lengths", option_lengths, FAM_BOTH},
    {"sock_option_common", option_common, FAM_BOTH},
    {"sock_fcntl_flags", fcntl_flags, FAM_V4},
    {"sock_ioctl_requests", ioctl_requests, FAM_V4},
    {"sock_poll_mixed", poll_mixed, FAM_V4},
    {"sock_poll_nval", poll_nval, FAM_V4},
    {0, 0, 0},
};

/* scenarios_tcp.c — TCP scenarios (tcp(7), connect(2), shutdown(2), poll(2), socket(7)). */
#define _GNU_SOURCE
#include "conformance.h"

#include <fcntl.h>
#include <netinet/tcp.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#define IO (POLLIN | POLLOUT | POLLRDHUP | POLLRDNORM | POLLWRNORM)

static socklen_t lo(struct ctx *x, int i, struct sockaddr_storage *ss) { return loopback(x, 0, x->port[i], ss); }

static int tcp_state(struct ctx *x, const char *label, int fd) {
    struct tcp_info info;
    socklen_t len = sizeof info;
    memset(&info, 0, sizeof info);
    errno = 0;
    if (x->c->getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &len) < 0) { rec_rc(label, -1, errno); return -1; }
    rec_note(label, "0 state=%u", info.tcpi_state);
    return info.tcpi_state;
}

static void reset_close(struct ctx *x, int fd) {
    struct linger l = {1, 0};
    RC("SO_LINGER 0", x->c->setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l));
    RC("close (reset)", x->c->close(fd));
}

/* ---------------- connection set-up ---------------- */

static void connect_basic(struct ctx *x) {
    int l, c, s;
    tcp_pair(x, &l, &c, &s);
    rec_sockname(x, "client getsockname", c);
    rec_peername(x, "client getpeername", c);
    rec_sockname(x, "server getsockname", s);
    rec_peername(x, "server getpeername", s);
    rec_sockname(x, "listener getsockname", l);
    rec_peername(x, "listener getpeername", l);
    tcp_state(x, "client TCP_INFO", c);
    tcp_state(x, "listener TCP_INFO", l);
    RC("send", x->c->send(c, "hello", 5, 0));
    char buf[16];
    wait_mask(x, "server mask", s, IO, POLLIN, 2000);
    RC("recv", x->c->recv(s, buf, sizeof buf, 0));
    RC("close client", x->c->close(c));
    RC("close server", x->c->close(s));
    RC("close listener", x->c->close(l));
}

static void connect_refused(struct ctx *x) {
    struct sockaddr_storage ss;
    int c = FD("socket", x->c->socket(x->family, SOCK_STREAM, 0));
    socklen_t len = lo(x, 1, &ss);
    RC("connect", x->c->connect(c, (void *)&ss, len));
    rec_soerror(x, "SO_ERROR after", c);
    poll_mask(x, "mask after", c, IO, 0);
    RC("connect again", x->c->connect(c, (void *)&ss, len));
    rec_peername(x, "getpeername", c);
    RC("send", x->c->send(c, "x", 1, 0));
    RC("recv", x->c->recv(c, (char[4]){0}, 4, MSG_DONTWAIT));
    int l = tcp_listener(x, 1, 4);
    RC("connect to a listener now", x->c->connect(c, (void *)&ss, len));
    rec_peername(x, "getpeername now", c);
    x->c->close(l);
    x->c->close(c);
}

static void bound_connect_refused(struct ctx *x) {
    struct sockaddr_storage me, to;
    int c = FD("socket", x->c->socket(x->family, SOCK_STREAM, 0));
    socklen_t mlen = lo(x, 2, &me), tlen = lo(x, 1, &to);
    RC("bind", x->c->bind(c, (void *)&me, mlen));
    RC("connect to nobody", x->c->connect(c, (void *)&to, tlen));
    rec_sockname(x, "still bound after the refusal", c);
    int l = tcp_listener(x, 1, 4);
    RC("connect again", x->c->connect(c, (void *)&to, tlen));
    int s = FD("accept", x->c->accept(l, NULL, NULL));
    rec_peername(x, "the listener sees the bound port", s);
    x->c->close(s);
    x->c->close(l);
    x->c->close(c);
}

static void nonblocking_refused(struct ctx *x) {
    struct sockaddr_storage ss;
    int c = FD("socket", x->c->socket(x->family, SOCK_STREAM | SOCK_NONBLOCK, 0));
    socklen_t len = lo(x, 1, &ss);
    RC("connect", x->c->connect(c, (void *)&ss, len));
    wait_mask(x, "mask when done", c, IO, POLLOUT, 2000);
    rec_soerror(x, "SO_ERROR", c);
    rec_soerror(x, "SO_ERROR again", c);
    poll_mask(x, "mask after SO_ERROR", c, IO, 0);
    RC("connect again", x->c->connect(c, (void *)&ss, len));
    wait_mask(x, "mask when done again", c, IO, POLLOUT, 2000);
    RC("recv (reports the error)", x->c->recv(c, (char[4]){0}, 4, 0));
    rec_soerror(x, "SO_ERROR after recv", c);
    x->c->close(c);
}

static void nonblocking_connect(struct ctx *x) {
    struct sockaddr_storage ss;
    int l = tcp_listener(x, 0, 4);
    int c = FD("socket", x->c->socket(x->family, SOCK_STREAM | SOCK_NONBLOCK, 0));
    socklen_t len = lo(x, 0, &ss);
    RC("connect", x->c->connect(c, (void *)&ss, len));
    wait_mask(x, "mask when done", c, IO, POLLOUT, 2000);
    rec_soerror(x, "SO_ERROR", c);
    RC("connect again", x->c->connect(c, (void *)&ss, len));
    rec_peername(x, "getpeername", c);
    wait_mask(x, "listener mask", l, IO, POLLIN, 2000);
    int s = FD("accept", x->c->accept(l, NULL, NULL));
    RC("send", x->c->send(c, "abc", 3, 0));
    wait_mask(x, "server mask", s, IO, POLLIN, 2000);
    RC("recv", x->c->recv(s, (char[8]){0}, 8, 0));
    x->c->close(c);
    x->c->close(s);
    x->c->close(l);
}

static void connect_twice(struct ctx *x) {
    int l, c, s;
    tcp_pair(x, &l, &c, &s);
    struct sockaddr_storage ss;
    socklen_t len = lo(x, 0, &ss);
    RC("connect again", x->c->connect(c, (void *)&ss, len));
    RC("connect on the accepted socket", x->c->connect(s, (void *)&ss, len));
    RC("connect on the listener", x->c->connect(l, (void *)&ss, len));
    x->c->close(c);
    x->c->close(s);
    x->c->close(l);
}

static void connect_unspec(struct ctx *x) {
    int l, c, s;
    tcp_pair(x, &l, &c, &s);
    struct sockaddr unspec = {.sa_family = AF_UNSPEC};
    RC("connect AF_UNSPEC", x->c->connect(c, &unspec, sizeof unspec));
    rec_peername(x, "getpeername after", c);
    tcp_state(x, "TCP_INFO after", c);
    wait_mask(x, "peer mask", s, IO, POLLERR, 2000);
    RC("peer recv", x->c->recv(s, (char[4]){0}, 4, 0));
    struct sockaddr_storage ss;
    socklen_t len = lo(x, 0, &ss);
    RC("connect again", x->c->connect(c, (void *)&ss, len));
    int s2 = FD("accept again", x->c->accept(l, NULL, NULL));
    RC("send", x->c->send(c, "z", 1, 0));
    wait_mask(x, "new server mask", s2, IO, POLLIN, 2000);
    RC("recv", x->c->recv(s2, (char[4]){0}, 4, 0));
    x->c->close(c);
    x->c->close(s);
    x->c->close(s2);
    x->c->close(l);
}

static void connect_bad_addresses(struct ctx *x) {
    struct sockaddr_storage ss;
    int c = FD("socket", x->c->socket(x->family, SOCK_STREAM, 0));
    socklen_t len = lo(x, 0, &ss);
    RC("connect short length", x->c->connect(c, (void *)&ss, len - 1));
    RC("connect length 1", x->c->connect(c, (void *)&ss, 1));
    RC("connect NULL", x->c->connect(c, NULL, len));
    struct sockaddr_storage other;
    socklen_t olen = loopback(x, x->family == AF_INET ? AF_INET6 : AF_INET, x->port[0], &other);
    RC("connect other family", x->c->connect(c, (void *)&other, olen));
    RC("connect other family, full length", x->c->connect(c, (void *)&other, sizeof(struct sockaddr_in6)));
    x->c->close(c);
}

/* ---------------- binding ---------------- */

static void bind_rules(struct ctx *x) {
    struct sockaddr_storage ss;
    int a = FD("socket", x->c->socket(x->family, SOCK_STREAM, 0));
    rec_sockname(x, "getsockname unbound", a);
    rec_peername(x, "getpeername unbound", a);
    socklen_t len = any_addr(x, 0, 0, &ss);
    RC("bind port 0", x->c->bind(a, (void *)&ss, len));
    rec_sockname(x, "getsockname", a);
    len = lo(x, 1, &ss);
    RC("bind again", x->c->bind(a, (void *)&ss, len));
    int b = FD("socket b", x->c->socket(x->family, SOCK_STREAM, 0));
    RC("bind short", x->c->bind(b, (void *)&ss, len - 1));
    RC("bind NULL", x->c->bind(b, NULL, len));
    struct sockaddr_storage other;
    socklen_t olen = loopback(x, x->family == AF_INET ? AF_INET6 : AF_INET, x->port[1], &other);
    RC("bind other family", x->c->bind(b, (void *)&other, olen));
    struct sockaddr_storage far;
    socklen_t flen;
    if (x->family == AF_INET) {
        struct sockaddr_in *in = (void *)&far;
        flen = sizeof *in;
        memset(&far, 0, sizeof far);
        in->sin_family = AF_INET;
        in->sin_port = htons(x->port[1]);
        in->sin_addr.s_addr = htonl(0x0a090909); /* 10.9.9.9: not ours */
    } else {
        struct sockaddr_in6 *in6 = (void *)&far;
        flen = sizeof *in6;
        memset(&far, 0, sizeof far);
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons(x->port[1]);
        in6->sin6_addr.s6_addr[0] = 0x20; in6->sin6_addr.s6_addr[1] = 0x01;
        in6->sin6_addr.s6_addr[2] = 0x0d; in6->sin6_addr.s6_addr[3] = 0xb8; in6->sin6_addr.s6_addr[15] = 9;
    }
    RC("bind an address that is not local", x->c->bind(b, (void *)&far, flen));
    RC("bind loopback", x->c->bind(b, (void *)&ss, len));
    rec_sockname(x, "getsockname b", b);
    x->c->close(a);
    x->c->close(b);
}

static void bind_in_use(struct ctx *x) {
    struct sockaddr_storage ss;
    socklen_t len = lo(x, 0, &ss);
    int a = FD("socket a", x->c->socket(x->family, SOCK_STREAM, 0));
    RC("bind a", x->c->bind(a, (void *)&ss, len));
    int b = FD("socket b", x->c->socket(x->family, SOCK_STREAM, 0));
    RC("bind b same address (a bound, not listening)", x->c->bind(b, (void *)&ss, len));
    RC("listen a", x->c->listen(a, 4));
    RC("bind b same address (a listening)", x->c->bind(b, (void *)&ss, len));
    x->c->close(a);
    x->c->close(b);
}

static void reuseaddr_and_listener(struct ctx *x) {
    struct sockaddr_storage ss;
    socklen_t len = lo(x, 0, &ss);
    int a = FD("socket a", x->c->socket(x->family, SOCK_STREAM, 0));
    set_intopt(x, "a SO_REUSEADDR", a, SOL_SOCKET, SO_REUSEADDR, 1);
    rec_intopt(x, "a SO_REUSEADDR get", a, SOL_SOCKET, SO_REUSEADDR);
    RC("bind a", x->c->bind(a, (void *)&ss, len));
    RC("listen a", x->c->listen(a, 4));
    int b = FD("socket b", x->c->socket(x->family, SOCK_STREAM, 0));
    set_intopt(x, "b SO_REUSEADDR", b, SOL_SOCKET, SO_REUSEADDR, 1);
    RC("bind b on the listening address", x->c->bind(b, (void *)&ss, len));
    x->c->close(a);
    x->c->close(b);
}

/* Closes a connection server side first (its port is then in TIME_WAIT on the kernel), then the
 * client and the listener. */
static void close_server_first(struct ctx *x, int l, int c, int s) {
    RC("close server", x->c->close(s));
    wait_mask(x, "client sees FIN", c, IO, POLLRDHUP, 2000);
    RC("close client", x->c->close(c));
    RC("close listener", x->c->close(l));
    sleep_ms(50);
}

static void reuseaddr_after_close(struct ctx *x) {
    struct sockaddr_storage ls;
    /* A listener without SO_REUSEADDR: its connections' TIME_WAIT keeps the port from a new
     * socket even with SO_REUSEADDR (both must have it). */
    int l = FD("listener socket", x->c->socket(x->family, SOCK_STREAM, 0));
    socklen_t llen = lo(x, 0, &ls);
    RC("listener bind", x->c->bind(l, (void *)&ls, llen));
    RC("listener listen", x->c->listen(l, 4));
    int c = FD("client socket", x->c->socket(x->family, SOCK_STREAM, 0));
    RC("client connect", x->c->connect(c, (void *)&ls, llen));
    int s = FD("accept", x->c->accept(l, NULL, NULL));
    close_server_first(x, l, c, s);
    struct sockaddr_storage ss;
    socklen_t len = lo(x, 0, &ss);
    int n = FD("new socket", x->c->socket(x->family, SOCK_STREAM, 0));
    set_intopt(x, "SO_REUSEADDR", n, SOL_SOCKET, SO_REUSEADDR, 1);
    RC("bind the old port", x->c->bind(n, (void *)&ss, len));
    RC("listen", x->c->listen(n, 4));
    x->c->close(n);
}

static void reuseaddr_both_after_close(struct ctx *x) {
    int l, c, s;
    tcp_pair(x, &l, &c, &s); /* its listener has SO_REUSEADDR */
    close_server_first(x, l, c, s);
    struct sockaddr_storage ss;
    socklen_t len = lo(x, 0, &ss);
    int n = FD("new socket", x->c->socket(x->family, SOCK_STREAM, 0));
    RC("bind the old port without SO_REUSEADDR", x->c->bind(n, (void *)&ss, len));
    int m = FD("another socket", x->c->socket(x->family, SOCK_STREAM, 0));
    set_intopt(x, "SO_REUSEADDR", m, SOL_SOCKET, SO_REUSEADDR, 1);
    RC("bind the old port with SO_REUSEADDR", x->c->bind(m, (void *)&ss, len));
    RC("listen", x->c->listen(m, 4));
    x->c->close(n);
    x->c->close(m);
}

static void listen_unbound(struct ctx *x) {
    int a = FD("socket", x->c->socket(x->family, SOCK_STREAM, 0));
    RC("listen unbound", x->c->listen(a, 4));
    rec_sockname(x, "getsockname", a);
    rec_intopt(x, "SO_ACCEPTCONN", a, SOL_SOCKET, SO_ACCEPTCONN);
    RC("listen again", x->c->listen(a, 8));
    x->c->close(a);
}

static void listen_backlog_zero(struct ctx *x) {
    struct sockaddr_storage ss;
    int l = tcp_listener(x, 0, 0);
    socklen_t len = lo(x, 0, &ss);
    int a = FD("socket a", x->c->socket(x->family, SOCK_STREAM | SOCK_NONBLOCK, 0));
    RC("connect a", x->c->connect(a, (void *)&ss, len));
    wait_mask(x, "a connected", a, IO, POLLOUT, 2000);
    int b = FD("socket b", x->c->socket(x->family, SOCK_STREAM | SOCK_NONBLOCK, 0));
    RC("connect b", x->c->connect(b, (void *)&ss, len));
    poll_mask(x, "b while the queue is full", b, IO, 300);
    int s = FD("accept a", x->c->accept(l, NULL, NULL));
    wait_mask(x, "b connected once there is room", b, IO, POLLOUT, 4000);
    x->c->close(s);
    x->c->close(a);
    x->c->close(b);
    x->c->close(l);
}

/* ---------------- listeners ---------------- */

static void listener_calls(struct ctx *x) {
    int l = tcp_listener(x, 0, 4);
    char buf[8];
    int n = -1;
    RC("recv on a listener", x->c->recv(l, buf, sizeof buf, MSG_DONTWAIT));
    RC("send on a listener", x->c->send(l, "x", 1, MSG_DONTWAIT));
    RC("FIONREAD on a listener", x->c->ioctl(l, FIONREAD, &n));
    tcp_state(x, "TCP_INFO on a listener", l);
    RC("shutdown SHUT_WR on a listener", x->c->shutdown(l, SHUT_WR));
    rec_peername(x, "getpeername", l);
    poll_mask(x, "idle listener mask", l, IO, 0);
    x->c->close(l);
}

static void accept_rules(struct ctx *x) {
    int a = FD("socket", x->c->socket(x->family, SOCK_STREAM, 0));
    RC("accept on an unlistened socket", x->c->accept(a, NULL, NULL));
    int l = tcp_listener(x, 0, 4);
    RC("fcntl O_NONBLOCK", x->c->fcntl(l, F_SETFL, O_NONBLOCK));
    RC("accept with nothing pending", x->c->accept(l, NULL, NULL));
    RC("accept4 bad flags", x->c->accept4(l, NULL, NULL, 0x40000000));
    struct sockaddr_storage ss;
    socklen_t len = lo(x, 0, &ss);
    int c = FD("client", x->c->socket(x->family, SOCK_STREAM, 0));
    RC("connect", x->c->connect(c, (void *)&ss, len));
    wait_mask(x, "listener mask", l, IO, POLLIN, 2000);
    struct sockaddr_storage peer;
    socklen_t plen = 8;
    memset(&peer, 0, sizeof peer);
    int s = FD("accept4 NONBLOCK with a short address buffer", x->c->accept4(l, (void *)&peer, &plen, SOCK_NONBLOCK));
    rec_note("address length reported", "%u", (unsigned)plen);
    rec_note("accepted O_NONBLOCK", "%d", (x->c->fcntl(s, F_GETFL, 0) & O_NONBLOCK) != 0);
    RC("recv on the accepted socket", x->c->recv(s, (char[4]){0}, 4, 0));
    poll_mask(x, "listener mask after", l, IO, 0);
    x->c->close(s);
    x->c->close(c);
    x->c->close(l);
    x->c->close(a);
}

static void accept_order(struct ctx *x) {
    struct sockaddr_storage ss;
    int l = tcp_listener(x, 0, 8);
    socklen_t len = lo(x, 0, &ss);
    int c[3];
    unsigned short ports[3];
    for (int i = 0; i < 3; i++) {
        c[i] = FD("client", x->c->socket(x->family, SOCK_STREAM, 0));
        RC("connect", x->c->connect(c[i], (void *)&ss, len));
        struct sockaddr_storage me;
        socklen_t mlen = sizeof me;
        x->c->getsockname(c[i], (void *)&me, &mlen);
        ports[i] = x->family == AF_INET ? ((struct sockaddr_in *)&me)->sin_port : ((struct sockaddr_in6 *)&me)->sin6_port;
    }
    for (int i = 0; i < 3; i++) {
        struct sockaddr_storage peer;
        socklen_t plen = sizeof peer;
        int s = FD("accept", x->c->accept(l, (void *)&peer, &plen));
        unsigned short p = x->family == AF_INET ? ((struct sockaddr_in *)&peer)->sin_port : ((struct sockaddr_in6 *)&peer)->sin6_port;
        rec_note("accepted in connect order", "%d len=%u", p == ports[i], (unsigned)plen);
        x->c->close(s);
    }
    for (int i = 0; i < 3; i++) x->c->close(c[i]);
    x->c->close(l);
}

struct shut { struct ctx *x; int fd; int how; };
static void do_shutdown(void *p) { struct shut *s = p; s->x->c->shutdown(s->fd, s->how); }

static void shutdown_listener(struct ctx *x) {
    int l = tcp_listener(x, 0, 4);
    struct shut sh = {x, l, SHUT_RDWR};
    void *t = later(150, do_shutdown, &sh);
    RC("blocked accept when the listener is shut down", x->c->accept(l, NULL, NULL));
    join_later(t);
    RC("accept after", x->c->accept(l, NULL, NULL));
    poll_mask(x, "mask after", l, IO, 0);
    rec_intopt(x, "SO_ACCEPTCONN after", l, SOL_SOCKET, SO_ACCEPTCONN);
    struct sockaddr_storage ss;
    socklen_t len = lo(x, 0, &ss);
    int c = FD("client", x->c->socket(x->family, SOCK_STREAM, 0));
    RC("connect to the shut listener", x->c->connect(c, (void *)&ss, len));
    RC("listen again", x->c->listen(l, 4));
    x->c->close(c);
    x->c->close(l);
}

static void shutdown_listener_rd(struct ctx *x) {
    int l = tcp_listener(x, 0, 4);
    RC("shutdown SHUT_RD", x->c->shutdown(l, SHUT_RD));
    RC("accept", x->c->accept(l, NULL, NULL));
    x->c->close(l);
}

static void listener_closed_with_pending(struct ctx *x) {
    struct sockaddr_storage ss;
    int l = tcp_listener(x, 0, 4);
    socklen_t len = lo(x, 0, &ss);
    int c = FD("client", x->c->socket(x->family, SOCK_STREAM, 0));
    RC("connect", x->c->connect(c, (void *)&ss, len));
    RC("send before accept", x->c->send(c, "abc", 3, 0));
    sleep_ms(50);
    RC("close the listener", x->c->close(l));
    wait_mask(x, "client mask", c, IO, POLLERR, 2000);
    rec_soerror(x, "SO_ERROR", c);
    RC("recv", x->c->recv(c, (char[4]){0}, 4, 0));
    RC("send", x->c->send(c, "x", 1, 0));
    x->c->close(c);
}

/* ---------------- data ---------------- */

static void peek_and_read(struct ctx *x) {
    int l, c, s;
    tcp_pair(x, &l, &c, &s);
    char buf[32];
    RC("recv DONTWAIT empty", x->c->recv(s, buf, sizeof buf, MSG_DONTWAIT));
    RC("recv 0 bytes DONTWAIT empty", x->c->recv(s, buf, 0, MSG_DONTWAIT));
    RC("send 10", x->c->send(c, "0123456789", 10, 0));
    wait_mask(x, "mask", s, IO, POLLIN, 2000);
    int n = -1;
    RC("FIONREAD", x->c->ioctl(s, FIONREAD, &n));
    rec_note("FIONREAD value", "%d", n);
    RC("recv 0 bytes with data", x->c->recv(s, buf, 0, 0));
    RC("peek 4", x->c->recv(s, buf, 4, MSG_PEEK));
    rec_note("peeked", "%.4s", buf);
    RC("recv 6", x->c->recv(s, buf, 6, 0));
    rec_note("read", "%.6s", buf);
    RC("read rest", x->c->read(s, buf, sizeof buf));
    rec_note("read", "%.4s", buf);
    poll_mask(x, "mask after reading all", s, IO, 0);
    RC("FIONREAD empty", x->c->ioctl(s, FIONREAD, &n));
    rec_note("FIONREAD value", "%d", n);
    RC("write", x->c->write(s, "back", 4));
    wait_mask(x, "client mask", c, IO, POLLIN, 2000);
    RC("read", x->c->read(c, buf, sizeof buf));
    RC("send 0 bytes", x->c->send(c, buf, 0, 0));
    x->c->close(c);
    x->c->close(s);
    x->c->close(l);
}

struct sender { struct ctx *x; int fd; const char *data; int len; };
static void do_send(void *p) { struct sender *s = p; s->x->c->send(s->fd, s->data, (size_t)s->len, 0); }

static void waitall(struct ctx *x) {
    int l, c, s;
    tcp_pair(x, &l, &c, &s);
    char buf[32];
    RC("send first half", x->c->send(c, "0123456789", 10, 0));
    struct sender second = {x, c, "abcdefghij", 10};
    void *t = later(150, do_send, &second);
    RC("recv WAITALL 20", x->c->recv(s, buf, 20, MSG_WAITALL));
    join_later(t);
    rec_note("data", "%.20s", buf);
    RC("shutdown client WR", x->c->shutdown(c, SHUT_WR));
    RC("recv WAITALL at EOF", x->c->recv(s, buf, 20, MSG_WAITALL));
    x->c->close(c);
    x->c->close(s);
    x->c->close(l);
}

static void waitall_short_by_eof(struct ctx *x) {
    int l, c, s;
    tcp_pair(x, &l, &c, &s);
    char buf[32];
    RC("send 5", x->c->send(c, "01234", 5, 0));
    RC("shutdown WR", x->c->shutdown(c, SHUT_WR));
    RC("recv WAITALL 20 gets what came before EOF", x->c->recv(s, buf, 20, MSG_WAITALL));
    RC("recv again", x->c->recv(s, buf, 20, 0));
    x->c->close(c);
    x->c->close(s);
    x->c->close(l);
}

static void addresses_on_a_connection(struct ctx *x) {
    int l, c, s;
    tcp_pair(x, &l, &c, &s);
    struct sockaddr_storage junk;
    memset(&junk, 0x5a, sizeof junk);
    ((struct sockaddr *)&junk)->sa_family = (sa_family_t)(x->family == AF_INET ? AF_INET6 : AF_INET);
    RC("sendto with an address on a connection (ignored)", x->c->sendto(c, "abc", 3, 0, (void *)&junk, sizeof junk));
    wait_mask(x, "server mask", s, POLLIN, POLLIN, 2000);
    struct sockaddr_storage from;
    socklen_t flen = sizeof from;
    RC("recvfrom with an address buffer", x->c->recvfrom(s, (char[8]){0}, 8, 0, (void *)&from, &flen));
    rec_note("address length reported", "%u", (unsigned)flen);
    x->c->close(c);
    x->c->close(s);
    x->c->close(l);
}

static void iovecs(struct ctx *x) {
    int l, c, s;
    tcp_pair(x, &l, &c, &s);
    struct iovec out[3] = {{"abc", 3}, {"", 0}, {"defgh", 5}};
    struct msghdr m = {.msg_iov = out, .msg_iovlen = 3};
    RC("sendmsg 3 iovecs", x->c->sendmsg(c, &m, 0));
    wait_mask(x, "mask", s, IO, POLLIN, 2000);
    char a[2], b[10];
    struct iovec in[2] = {{a, 2}, {b, 10}};
    struct msghdr r = {.msg_iov = in, .msg_iovlen = 2};
    RC("recvmsg 2 iovecs", x->c->recvmsg(s, &r, 0));
    rec_note("data", "%.2s|%.6s flags=%d", a, b, r.msg_flags);
    x->c->close(c);
    x->c->close(s);
    x->c->close(l);
}

static void bulk(struct ctx *x) {
    int l, c, s;
    tcp_pair(x, &l, &c, &s);
    enum { N = 1 << 20 };
    static char out[N], in[N];
    for (int i = 0; i < N; i++) out[i] = (char)(i * 7 + (i >> 9));
    struct sender snd = {x, c, out, N};
    void *t = later(0, do_send, &snd);
    read_all(x, "received", s, in, N, 10000);
    join_later(t);
    rec_note("same bytes", "%d", memcmp(in, out, N) == 0);
    x->c->close(c);
    x->c->close(s);
    x->c->close(l);
}

static void nonblocking_full(struct ctx *x) {
    int l, c, s;
    tcp_pair(x, &l, &c, &s);
    RC("O_NONBLOCK", x->c->fcntl(c, F_SETFL, O_NONBLOCK));
    rec_note("F_GETFL has O_NONBLOCK", "%d", (x->c->fcntl(c, F_GETFL, 0) & O_NONBLOCK) != 0);
    static char chunk[65536];
    long total = 0, rc = 0;
    /* Fill until EAGAIN, three times with a pause: the path between the two sockets (the kernel's
     * buffers, or the rings and lwIP's) is full and stays full; then look at once. */
    for (int round = 0; round < 3; round++) {
        if (round > 0) sleep_ms(100);
        for (int i = 0; i < 20000; i++) {
            rc = x->c->send(c, chunk, sizeof chunk, 0);
            if (rc < 0) break;
            total += rc;
        }
    }
    rec_note("sent until", "%s", rc < 0 ? strerrorname_np(errno) : "never full");
    rec_note("accepted some", "%d", total > 0);
    poll_mask(x, "mask when full", c, POLLOUT, 0);
    static char sink[1 << 20];
    long drained = 0;
    while (drained < total) {
        long r = x->c->recv(s, sink, sizeof sink, MSG_DONTWAIT);
        if (r > 0) drained += r;
        else { struct pollfd p = {s, POLLIN, 0}; if (x->c->poll(&p, 1, 2000) <= 0) break; }
    }
    rec_note("drained all", "%d", drained == total);
    wait_mask(x, "writable again", c, POLLOUT, POLLOUT, 2000);
    x->c->close(c);
    x->c->close(s);
    x->c->close(l);
}

static void rcvtimeo(struct ctx *x) {
    int l, c, s;
    tcp_pair(x, &l, &c, &s);
    struct timeval tv = {0, 100000};
    RC("SO_RCVTIMEO 100 ms", x->c->setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv));
    struct timeval got = {0, 0};
    socklen_t len = sizeof got;
    RC("get SO_RCVTIMEO", x->c->getsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &got, &len));
    rec_note("value", "%ld.%06ld", (long)got.tv_sec, (long)got.tv_usec);
    RC("recv times out", x->c->recv(s, (char[4]){0}, 4, 0));
    struct timeval bad = {0, 2000000};
    RC("SO_RCVTIMEO bad usec", x->c->setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &bad, sizeof bad));
    RC("SO_RCVTIMEO short length", x->c->setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, 4));
    x->c->close(c);
    x->c->close(s);
    x->c->close(l);
}

/* ---------------- closing ---------------- */

static void orderly_close_both_ways(struct ctx *x) {
    int l, c, s;
    tcp_pair(x, &l, &c, &s);
    char buf[8];
    RC("client SHUT_WR", x->c->shutdown(c, SHUT_WR));
    wait_mask(x, "server sees FIN", s, IO, POLLRDHUP, 2000);
    RC("server recv EOF", x->c->recv(s, buf, sizeof buf, 0));
    tcp_state(x, "server TCP_INFO", s);
    RC("server SHUT_WR", x->c->shutdown(s, SHUT_WR));
    wait_mask(x, "client sees FIN", c, IO, POLLRDHUP, 2000);
    sleep_ms(50);
    poll_mask(x, "client mask", c, IO, 0);
    poll_mask(x, "server mask", s, IO, 0);
    RC("client recv", x->c->recv(c, buf, sizeof buf, 0));
    RC("server recv", x->c->recv(s, buf, sizeof buf, 0));
    rec_soerror(x, "client SO_ERROR", c);
    rec_soerror(x, "server SO_ERROR", s);
    RC("client send", x->c->send(c, "x", 1, 0));
    RC("server send", x->c->send(s, "x", 1, 0));
    RC("client recv again", x->c->recv(c, buf, sizeof buf, 0));
    x->c->close(c);
    x->c->close(s);
    x->c->close(l);
}

static void close_delivers_then_eof(struct ctx *x) {
    int l, c, s;
    tcp_pair(x, &l, &c, &s);
    char buf[32];
    RC("send", x->c->send(c, "last words", 10, 0));
    RC("close client", x->c->close(c));
    wait_mask(x, "server mask", s, IO, POLLIN | POLLRDHUP, 2000);
    RC("recv data", x->c->recv(s, buf, sizeof buf, 0));
    RC("recv EOF", x->c->recv(s, buf, sizeof buf, 0));
    RC("recv EOF again", x->c->recv(s, buf, sizeof buf, 0));
    tcp_state(x, "TCP_INFO", s);
    RC("first send to a closed peer", x->c->send(s, "x", 1, 0));
    wait_mask(x, "mask after the peer's reset", s, IO, POLLERR, 2000);
    RC("second send", x->c->send(s, "x", 1, 0));
    RC("third send", x->c->send(s, "x", 1, 0));
    RC("recv", x->c->recv(s, buf, sizeof buf, 0));
    x->c->close(s);
    x->c->close(l);
}

static void linger_zero_resets(struct ctx *x) {
    int l, c, s;
    tcp_pair(x, &l, &c, &s);
    struct linger got;
    socklen_t len = sizeof got;
    RC("get SO_LINGER", x->c->getsockopt(s, SOL_SOCKET, SO_LINGER, &got, &len));
    rec_note("linger", "%d %d len=%u", got.l_onoff, got.l_linger, (unsigned)len);
    reset_close(x, s);
    wait_mask(x, "client mask", c, IO, POLLERR, 2000);
    rec_soerror(x, "SO_ERROR", c);
    rec_soerror(x, "SO_ERROR again", c);
    RC("recv", x->c->recv(c, (char[4]){0}, 4, 0));
    RC("recv again", x->c->recv(c, (char[4]){0}, 4, 0));
    RC("send", x->c->send(c, "x", 1, 0));
    poll_mask(x, "mask at the end", c, IO, 0);
    x->c->close(c);
    x->c->close(l);
}

static void reset_then_send_first(struct ctx *x) {
    int l, c, s;
    tcp_pair(x, &l, &c, &s);
    reset_close(x, s);
    wait_mask(x, "client mask", c, IO, POLLERR, 2000);
    RC("first send after the reset", x->c->send(c, "x", 1, 0));
    RC("second send", x->c->send(c, "x", 1, 0));
    RC("recv", x->c->recv(c, (char[4]){0}, 4, 0));
    x->c->close(c);
    x->c->close(l);
}

static void close_with_unread_resets(struct ctx *x) {
    int l, c, s;
    tcp_pair(x, &l, &c, &s);
    RC("send", x->c->send(c, "unread", 6, 0));
    wait_mask(x, "server has it", s, IO, POLLIN, 2000);
    RC("close with unread data", x->c->close(s));
    wait_mask(x, "client mask", c, IO, POLLERR, 2000);
    RC("recv", x->c->recv(c, (char[4]){0}, 4, 0));
    x->c->close(c);
    x->c->close(l);
}

static void shut_wr_self(struct ctx *x) {
    int l, c, s;
    tcp_pair(x, &l, &c, &s);
    RC("SHUT_WR", x->c->shutdown(c, SHUT_WR));
    poll_mask(x, "own mask", c, IO, 0);
    RC("send after SHUT_WR", x->c->send(c, "x", 1, 0));
    RC("SHUT_WR again", x->c->shutdown(c, SHUT_WR));
    RC("server sends", x->c->send(s, "reply", 5, 0));
    wait_mask(x, "client can read", c, IO, POLLIN, 2000);
    RC("client reads after its SHUT_WR", x->c->recv(c, (char[8]){0}, 8, 0));
    wait_mask(x, "server mask", s, IO, POLLRDHUP, 2000);
    tcp_state(x, "client TCP_INFO", c);
    x->c->close(c);
    x->c->close(s);
    x->c->close(l);
}

static void shut_rd_self(struct ctx *x) {
    int l, c, s;
    tcp_pair(x, &l, &c, &s);
    RC("SHUT_RD", x->c->shutdown(s, SHUT_RD));
    poll_mask(x, "own mask", s, IO, 0);
    RC("recv after SHUT_RD", x->c->recv(s, (char[8]){0}, 8, MSG_DONTWAIT));
    RC("peer sends", x->c->send(c, "late", 4, 0));
    sleep_ms(100);
    poll_mask(x, "mask with data after SHUT_RD", s, IO, 0);
    RC("recv data that came after SHUT_RD", x->c->recv(s, (char[8]){0}, 8, MSG_DONTWAIT));
    RC("send still works", x->c->send(s, "ok", 2, 0));
    x->c->close(c);
    x->c->close(s);
    x->c->close(l);
}

static void shut_rdwr_self(struct ctx *x) {
    int l, c, s;
    tcp_pair(x, &l, &c, &s);
    RC("SHUT_RDWR", x->c->shutdown(c, SHUT_RDWR));
    poll_mask(x, "own mask", c, IO, 0);
    RC("recv", x->c->recv(c, (char[8]){0}, 8, 0));
    RC("send", x->c->send(c, "x", 1, 0));
    wait_mask(x, "peer mask", s, IO, POLLRDHUP, 2000);
    RC("peer recv", x->c->recv(s, (char[8]){0}, 8, 0));
    x->c->close(c);
    x->c->close(s);
    x->c->close(l);
}

static void shutdown_errors(struct ctx *x) {
    int a = FD("socket", x->c->socket(x->family, SOCK_STREAM, 0));
    RC("shutdown unconnected", x->c->shutdown(a, SHUT_RDWR));
    RC("shutdown bad how", x->c->shutdown(a, 7));
    RC("send unconnected", x->c->send(a, "x", 1, 0));
    RC("recv unconnected", x->c->recv(a, (char[4]){0}, 4, MSG_DONTWAIT));
    poll_mask(x, "fresh socket mask", a, IO, 0);
    tcp_state(x, "fresh TCP_INFO", a);
    int l, c, s;
    tcp_pair(x, &l, &c, &s);
    RC("shutdown bad how connected", x->c->shutdown(c, -1));
    x->c->close(a);
    x->c->close(c);
    x->c->close(s);
    x->c->close(l);
}

static void peer_half_close(struct ctx *x) {
    int l, c, s;
    tcp_pair(x, &l, &c, &s);
    poll_mask(x, "idle connected mask", c, IO, 0);
    RC("client SHUT_WR", x->c->shutdown(c, SHUT_WR));
    wait_mask(x, "server mask", s, IO, POLLRDHUP, 2000);
    RC("server recv EOF", x->c->recv(s, (char[8]){0}, 8, 0));
    RC("server still sends", x->c->send(s, "more", 4, 0));
    wait_mask(x, "client mask", c, IO, POLLIN, 2000);
    RC("client reads", x->c->recv(c, (char[8]){0}, 8, 0));
    RC("server closes", x->c->close(s));
    wait_mask(x, "client sees FIN", c, IO, POLLRDHUP, 2000);
    sleep_ms(50);
    poll_mask(x, "client mask at the end", c, IO, 0);
    RC("client recv EOF", x->c->recv(c, (char[8]){0}, 8, 0));
    tcp_state(x, "client TCP_INFO", c);
    x->c->close(c);
    x->c->close(l);
}

/* ---------------- options ---------------- */

static void option_defaults(struct ctx *x) {
    int a = FD("socket", x->c->socket(x->family, SOCK_STREAM, 0));
    rec_common_options(x, a);
    rec_intopt(x, "TCP_NODELAY", a, IPPROTO_TCP, TCP_NODELAY);
    x->c->close(a);
}

static void option_setting(struct ctx *x) {
    int a = FD("socket", x->c->socket(x->family, SOCK_STREAM, 0));
    set_intopt(x, "TCP_NODELAY 1", a, IPPROTO_TCP, TCP_NODELAY, 1);
    rec_intopt(x, "TCP_NODELAY", a, IPPROTO_TCP, TCP_NODELAY);
    set_intopt(x, "SO_KEEPALIVE 1", a, SOL_SOCKET, SO_KEEPALIVE, 1);
    rec_intopt(x, "SO_KEEPALIVE", a, SOL_SOCKET, SO_KEEPALIVE);
    set_intopt(x, "TCP_KEEPIDLE 30", a, IPPROTO_TCP, TCP_KEEPIDLE, 30);
    rec_intopt(x, "TCP_KEEPIDLE", a, IPPROTO_TCP, TCP_KEEPIDLE);
    set_intopt(x, "TCP_KEEPINTVL 5", a, IPPROTO_TCP, TCP_KEEPINTVL, 5);
    rec_intopt(x, "TCP_KEEPINTVL", a, IPPROTO_TCP, TCP_KEEPINTVL);
    set_intopt(x, "TCP_KEEPCNT 4", a, IPPROTO_TCP, TCP_KEEPCNT, 4);
    rec_intopt(x, "TCP_KEEPCNT", a, IPPROTO_TCP, TCP_KEEPCNT);
    set_intopt(x, "TCP_KEEPIDLE 0", a, IPPROTO_TCP, TCP_KEEPIDLE, 0);
    set_intopt(x, "SO_REUSEPORT 1", a, SOL_SOCKET, SO_REUSEPORT, 1);
    rec_intopt(x, "SO_REUSEPORT", a, SOL_SOCKET, SO_REUSEPORT);
    if (x->family == AF_INET) {
        set_intopt(x, "IP_TTL 10", a, IPPROTO_IP, IP_TTL, 10);
        rec_intopt(x, "IP_TTL", a, IPPROTO_IP, IP_TTL);
        set_intopt(x, "IP_TTL -1 (default)", a, IPPROTO_IP, IP_TTL, -1);
        rec_intopt(x, "IP_TTL after -1", a, IPPROTO_IP, IP_TTL);
        set_intopt(x, "IP_TTL 0", a, IPPROTO_IP, IP_TTL, 0);
        set_intopt(x, "IP_TTL 256", a, IPPROTO_IP, IP_TTL, 256);
        set_intopt(x, "IP_TOS 0x10", a, IPPROTO_IP, IP_TOS, 0x10);
        rec_intopt(x, "IP_TOS", a, IPPROTO_IP, IP_TOS);
    } else {
        set_intopt(x, "IPV6_UNICAST_HOPS 10", a, IPPROTO_IPV6, IPV6_UNICAST_HOPS, 10);
        rec_intopt(x, "IPV6_UNICAST_HOPS", a, IPPROTO_IPV6, IPV6_UNICAST_HOPS);
        set_intopt(x, "IPV6_UNICAST_HOPS -1", a, IPPROTO_IPV6, IPV6_UNICAST_HOPS, -1);
        rec_intopt(x, "IPV6_UNICAST_HOPS after -1", a, IPPROTO_IPV6, IPV6_UNICAST_HOPS);
        set_intopt(x, "IPV6_UNICAST_HOPS 256", a, IPPROTO_IPV6, IPV6_UNICAST_HOPS, 256);
        set_intopt(x, "IPV6_V6ONLY 1", a, IPPROTO_IPV6, IPV6_V6ONLY, 1);
        rec_intopt(x, "IPV6_V6ONLY", a, IPPROTO_IPV6, IPV6_V6ONLY);
    }
    short s16 = 1;
    RC("TCP_NODELAY with a 2-byte value", x->c->setsockopt(a, IPPROTO_TCP, TCP_NODELAY, &s16, sizeof s16));
    RC("unknown SOL_SOCKET option", x->c->setsockopt(a, SOL_SOCKET, 9999, &s16, sizeof(int)));
    int v;
    socklen_t len = sizeof v;
    RC("getsockopt unknown TCP option", x->c->getsockopt(a, IPPROTO_TCP, 9999, &v, &len));
    RC("getsockopt unknown level", x->c->getsockopt(a, 9999, 1, &v, &len));
    x->c->close(a);
}

static void option_on_connected(struct ctx *x) {
    int l, c, s;
    tcp_pair(x, &l, &c, &s);
    rec_intopt(x, "accepted TCP_NODELAY", s, IPPROTO_TCP, TCP_NODELAY);
    set_intopt(x, "listener TCP_NODELAY 1", l, IPPROTO_TCP, TCP_NODELAY, 1);
    int c2 = FD("client 2", x->c->socket(x->family, SOCK_STREAM, 0));
    struct sockaddr_storage ss;
    socklen_t len = lo(x, 0, &ss);
    RC("connect 2", x->c->connect(c2, (void *)&ss, len));
    int s2 = FD("accept 2", x->c->accept(l, NULL, NULL));
    rec_intopt(x, "accepted inherits TCP_NODELAY", s2, IPPROTO_TCP, TCP_NODELAY);
    if (x->family == AF_INET) {
        set_intopt(x, "IP_TTL on a connection", c, IPPROTO_IP, IP_TTL, 33);
        rec_intopt(x, "IP_TTL", c, IPPROTO_IP, IP_TTL);
    }
    tcp_state(x, "TCP_INFO connected", c);
    rec_intopt(x, "SO_ERROR", c, SOL_SOCKET, SO_ERROR);
    int n = -1;
    RC("FIONBIO 1", x->c->ioctl(c, FIONBIO, &(int){1}));
    RC("recv after FIONBIO", x->c->recv(c, (char[4]){0}, 4, 0));
    RC("FIONREAD", x->c->ioctl(c, FIONREAD, &n));
    rec_note("FIONREAD value", "%d", n);
    x->c->close(c);
    x->c->close(s);
    x->c->close(c2);
    x->c->close(s2);
    x->c->close(l);
}

/* ---------------- IPv6 and v4-mapped ---------------- */

static void v6_dual_stack_listener(struct ctx *x) {
    struct sockaddr_storage ss;
    int l = FD("v6 listener", x->c->socket(AF_INET6, SOCK_STREAM, 0));
    rec_intopt(x, "IPV6_V6ONLY default", l, IPPROTO_IPV6, IPV6_V6ONLY);
    socklen_t len = any_addr(x, AF_INET6, x->port[0], &ss);
    RC("bind [::]", x->c->bind(l, (void *)&ss, len));
    RC("listen", x->c->listen(l, 4));
    int c = FD("v4 client", x->c->socket(AF_INET, SOCK_STREAM, 0));
    len = loopback(x, AF_INET, x->port[0], &ss);
    RC("v4 connect to the v6 listener", x->c->connect(c, (void *)&ss, len));
    struct sockaddr_storage peer;
    socklen_t plen = sizeof peer;
    int s = FD("accept", x->c->accept(l, (void *)&peer, &plen));
    rec_addr(x, "accepted peer", (void *)&peer, plen);
    rec_sockname(x, "accepted getsockname", s);
    rec_peername(x, "accepted getpeername", s);
    RC("send", x->c->send(s, "46", 2, 0));
    wait_mask(x, "client mask", c, IO, POLLIN, 2000);
    RC("recv", x->c->recv(c, (char[4]){0}, 4, 0));
    x->c->close(c);
    x->c->close(s);
    x->c->close(l);
}

static void v6_only_listener(struct ctx *x) {
    struct sockaddr_storage ss;
    int l = FD("v6 listener", x->c->socket(AF_INET6, SOCK_STREAM, 0));
    set_intopt(x, "IPV6_V6ONLY 1", l, IPPROTO_IPV6, IPV6_V6ONLY, 1);
    socklen_t len = any_addr(x, AF_INET6, x->port[0], &ss);
    RC("bind [::]", x->c->bind(l, (void *)&ss, len));
    RC("listen", x->c->listen(l, 4));
    set_intopt(x, "IPV6_V6ONLY after bind", l, IPPROTO_IPV6, IPV6_V6ONLY, 0);
    int c = FD("v4 client", x->c->socket(AF_INET, SOCK_STREAM, 0));
    len = loopback(x, AF_INET, x->port[0], &ss);
    RC("v4 connect is refused", x->c->connect(c, (void *)&ss, len));
    int v4 = FD("v4 listener on the same port", x->c->socket(AF_INET, SOCK_STREAM, 0));
    RC("bind 0.0.0.0 same port", x->c->bind(v4, (void *)&ss, len));
    x->c->close(v4);
    x->c->close(c);
    x->c->close(l);
}

static void v6_mapped_connect(struct ctx *x) {
    struct sockaddr_storage ss;
    int l = tcp_listener(x, 0, 4); /* an IPv4 listener (family v4) */
    int c = FD("v6 client", x->c->socket(AF_INET6, SOCK_STREAM, 0));
    socklen_t len = mapped_loopback(x->port[0], &ss);
    RC("connect ::ffff:127.0.0.1", x->c->connect(c, (void *)&ss, len));
    rec_sockname(x, "getsockname", c);
    rec_peername(x, "getpeername", c);
    int s = FD("accept", x->c->accept(l, NULL, NULL));
    rec_peername(x, "accepted peer", s);
    RC("send", x->c->send(c, "map", 3, 0));
    wait_mask(x, "server mask", s, IO, POLLIN, 2000);
    RC("recv", x->c->recv(s, (char[4]){0}, 4, 0));
    x->c->close(c);
    x->c->close(s);
    x->c->close(l);
}

static void v6_mapped_v6only(struct ctx *x) {
    struct sockaddr_storage ss;
    int c = FD("v6 client", x->c->socket(AF_INET6, SOCK_STREAM, 0));
    set_intopt(x, "IPV6_V6ONLY 1", c, IPPROTO_IPV6, IPV6_V6ONLY, 1);
    socklen_t len = mapped_loopback(x->port[0], &ss);
    RC("connect ::ffff:127.0.0.1 when v6-only", x->c->connect(c, (void *)&ss, len));
    RC("bind ::ffff:127.0.0.1 when v6-only", x->c->bind(c, (void *)&ss, len));
    x->c->close(c);
}

static void v6_bind_mapped(struct ctx *x) {
    struct sockaddr_storage ss;
    int l = FD("v6 socket", x->c->socket(AF_INET6, SOCK_STREAM, 0));
    socklen_t len = mapped_loopback(x->port[0], &ss);
    RC("bind ::ffff:127.0.0.1", x->c->bind(l, (void *)&ss, len));
    RC("listen", x->c->listen(l, 4));
    rec_sockname(x, "getsockname", l);
    int c = FD("v4 client", x->c->socket(AF_INET, SOCK_STREAM, 0));
    len = loopback(x, AF_INET, x->port[0], &ss);
    RC("v4 connect", x->c->connect(c, (void *)&ss, len));
    struct sockaddr_storage peer;
    socklen_t plen = sizeof peer;
    int s = FD("accept", x->c->accept(l, (void *)&peer, &plen));
    rec_addr(x, "peer", (void *)&peer, plen);
    x->c->close(c);
    x->c->close(s);
    x->c->close(l);
}

static void v6_rfc2133_length(struct ctx *x) {
    struct sockaddr_storage ss;
    int l = FD("v6 socket", x->c->socket(AF_INET6, SOCK_STREAM, 0));
    loopback(x, AF_INET6, x->port[0], &ss);
    RC("bind with the 24-byte RFC 2133 length", x->c->bind(l, (void *)&ss, 24));
    RC("listen", x->c->listen(l, 4));
    int c = FD("v6 client", x->c->socket(AF_INET6, SOCK_STREAM, 0));
    RC("connect with 24 bytes", x->c->connect(c, (void *)&ss, 24));
    RC("connect with 23 bytes", x->c->connect(FD("another", x->c->socket(AF_INET6, SOCK_STREAM, 0)), (void *)&ss, 23));
    x->c->close(c);
    x->c->close(l);
}

static void v6_loopback_names(struct ctx *x) {
    int l, c, s;
    tcp_pair(x, &l, &c, &s);
    struct sockaddr_in6 small;
    socklen_t len = 16;
    RC("getsockname into 16 bytes", x->c->getsockname(c, (void *)&small, &len));
    rec_note("length reported", "%u", (unsigned)len);
    x->c->close(c);
    x->c->close(s);
    x->c->close(l);
}

const struct scenario tcp_scenarios[] = {
    {"tcp_connect_basic", connect_basic, FAM_BOTH},
    {"tcp_connect_refused", connect_refused, FAM_BOTH},
    {"tcp_nonblocking_refused", nonblocking_refused, FAM_BOTH},
    {"tcp_bound_connect_refused", bound_connect_refused, FAM_BOTH},
    {"tcp_nonblocking_connect", nonblocking_connect, FAM_BOTH},
    {"tcp_connect_twice", connect_twice, FAM_BOTH},
    {"tcp_connect_unspec", connect_unspec, FAM_BOTH},
    {"tcp_connect_bad_addresses", connect_bad_addresses, FAM_BOTH},
    {"tcp_bind_rules", bind_rules, FAM_BOTH},
    {"tcp_bind_in_use", bind_in_use, FAM_BOTH},
    {"tcp_reuseaddr_and_listener", reuseaddr_and_listener, FAM_BOTH},
    {"tcp_reuseaddr_after_close", reuseaddr_after_close, FAM_BOTH},
    {"tcp_reuseaddr_both_after_close", reuseaddr_both_after_close, FAM_BOTH},
    {"tcp_listen_unbound", listen_unbound, FAM_BOTH},
    {"tcp_listen_backlog_zero", listen_backlog_zero, FAM_BOTH},
    {"tcp_listener_calls", listener_calls, FAM_BOTH},
    {"tcp_accept_rules", accept_rules, FAM_BOTH},
    {"tcp_accept_order", accept_order, FAM_BOTH},
    {"tcp_shutdown_listener", shutdown_listener, FAM_BOTH},
    {"tcp_shutdown_listener_rd", shutdown_listener_rd, FAM_BOTH},
    {"tcp_listener_closed_with_pending", listener_closed_with_pending, FAM_BOTH},
    {"tcp_peek_and_read", peek_and_read, FAM_BOTH},
    {"tcp_waitall", waitall, FAM_BOTH},
    {"tcp_waitall_short_by_eof", waitall_short_by_eof, FAM_BOTH},
    {"tcp_iovecs", iovecs, FAM_BOTH},
    {"tcp_addresses_on_a_connection", addresses_on_a_connection, FAM_BOTH},
    {"tcp_bulk", bulk, FAM_BOTH},
    {"tcp_nonblocking_full", nonblocking_full, FAM_BOTH},
    {"tcp_rcvtimeo", rcvtimeo, FAM_BOTH},
    {"tcp_orderly_close_both_ways", orderly_close_both_ways, FAM_BOTH},
    {"tcp_close_delivers_then_eof", close_delivers_then_eof, FAM_BOTH},
    {"tcp_linger_zero_resets", linger_zero_resets, FAM_BOTH},
    {"tcp_reset_then_send_first", reset_then_send_first, FAM_BOTH},
    {"tcp_close_with_unread_resets", close_with_unread_resets, FAM_BOTH},
    {"tcp_shut_wr_self", shut_wr_self, FAM_BOTH},
    {"tcp_shut_rd_self", shut_rd_self, FAM_BOTH},
    {"tcp_shut_rdwr_self", shut_rdwr_self, FAM_BOTH},
    {"tcp_shutdown_errors", shutdown_errors, FAM_BOTH},
    {"tcp_peer_half_close", peer_half_close, FAM_BOTH},
    {"tcp_option_defaults", option_defaults, FAM_BOTH},
    {"tcp_option_setting", option_setting, FAM_BOTH},
    {"tcp_option_on_connected", option_on_connected, FAM_BOTH},
    {"tcp_v6_dual_stack_listener", v6_dual_stack_listener, FAM_V6},
    {"tcp_v6_only_listener", v6_only_listener, FAM_V6},
    {"tcp_v6_mapped_connect", v6_mapped_connect, FAM_V4},
    {"tcp_v6_mapped_v6only", v6_mapped_v6only, FAM_V6},
    {"tcp_v6_bind_mapped", v6_bind_mapped, FAM_V6},
    {"tcp_v6_rfc2133_length", v6_rfc2133_length, FAM_V6},
    {"tcp_v6_loopback_names", v6_loopback_names, FAM_V6},
    {0, 0, 0},
};

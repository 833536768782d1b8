/* scenarios_udp.c — UDP scenarios (udp(7), ip(7), ipv6(7), socket(7), connect(2), shutdown(2), poll(2)). */
#define _GNU_SOURCE
#include "conformance.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/udp.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/uio.h>
#include <unistd.h>

#define IO (POLLIN | POLLOUT | POLLRDHUP | POLLRDNORM | POLLWRNORM)

#ifndef SIOCOUTQ
#define SIOCOUTQ 0x5411 /* TIOCOUTQ */
#endif

static socklen_t lo(struct ctx *x, int i, struct sockaddr_storage *ss) { return loopback(x, 0, x->port[i], ss); }

/* An address length that is too short for the family (IPv6 accepts 24 bytes, RFC 2133). */
static socklen_t short_len(struct ctx *x) { return x->family == AF_INET ? sizeof(struct sockaddr_in) - 1 : 23; }

static int udp_socket(struct ctx *x, const char *label) { return FD(label, x->c->socket(x->family, SOCK_DGRAM, 0)); }

/* A UDP socket of this family bound to loopback port i, with its own labels. */
static int bound(struct ctx *x, const char *label, int i) {
    struct sockaddr_storage ss;
    int fd = FD(label, x->c->socket(x->family, SOCK_DGRAM, 0));
    socklen_t len = lo(x, i, &ss);
    RC("bind", x->c->bind(fd, (void *)&ss, len));
    return fd;
}

static long send_to(struct ctx *x, const char *label, int fd, const void *buf, size_t n, int i) {
    struct sockaddr_storage ss;
    socklen_t len = lo(x, i, &ss);
    return RC(label, x->c->sendto(fd, buf, n, 0, (void *)&ss, len));
}

static long connect_to(struct ctx *x, const char *label, int fd, int i) {
    struct sockaddr_storage ss;
    socklen_t len = lo(x, i, &ss);
    return RC(label, x->c->connect(fd, (void *)&ss, len));
}

/* recvfrom with MSG_DONTWAIT (after a wait_mask), recording the count, the data and the source. */
static long recv_from(struct ctx *x, const char *label, int fd, size_t size, int flags) {
    char buf[256];
    struct sockaddr_storage from;
    socklen_t flen = sizeof from;
    memset(&from, 0, sizeof from);
    memset(buf, 0, sizeof buf);
    if (size > sizeof buf) size = sizeof buf;
    long n = RC(label, x->c->recvfrom(fd, buf, size, flags | MSG_DONTWAIT, (void *)&from, &flen));
    if (n >= 0) {
        rec_note("  data", "%.*s", (int)(n < (long)size ? n : (long)size), buf);
        rec_addr(x, "  from", (void *)&from, flen);
    }
    return n;
}

static long recv_data(struct ctx *x, const char *label, int fd, size_t size, int flags) {
    char buf[256];
    memset(buf, 0, sizeof buf);
    if (size > sizeof buf) size = sizeof buf;
    long n = RC(label, x->c->recv(fd, buf, size, flags));
    if (n > 0) rec_note("  data", "%.*s", (int)(n < (long)size ? n : (long)size), buf);
    return n;
}

static void fionread(struct ctx *x, const char *label, int fd) {
    int n = -1;
    if (RC(label, x->c->ioctl(fd, FIONREAD, &n)) == 0) rec_note("  value", "%d", n);
}

static unsigned short port_of(const struct sockaddr_storage *ss) {
    return ntohs(ss->ss_family == AF_INET ? ((const struct sockaddr_in *)ss)->sin_port
                                          : ((const struct sockaddr_in6 *)ss)->sin6_port);
}

/* The address a socket is bound to, unrecorded (to send a reply to it). */
static socklen_t own_name(struct ctx *x, int fd, struct sockaddr_storage *ss) {
    socklen_t len = sizeof *ss;
    memset(ss, 0, sizeof *ss);
    x->c->getsockname(fd, (void *)ss, &len);
    return len;
}

static void set_rcvtimeo(struct ctx *x, int fd, int ms) {
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    RC("SO_RCVTIMEO", x->c->setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv));
}

/* ---------------- basic data ---------------- */

static void sendto_recvfrom(struct ctx *x) {
    int r = bound(x, "receiver", 0);
    int s = bound(x, "sender", 1);
    send_to(x, "sendto", s, "hello", 5, 0);
    wait_mask(x, "receiver mask", r, IO, POLLIN, 2000);
    recv_from(x, "recvfrom", r, 64, 0);
    send_to(x, "sendto again", s, "again", 5, 0);
    wait_mask(x, "receiver mask again", r, IO, POLLIN, 2000);
    char buf[16];
    RC("recvfrom NULL address", x->c->recvfrom(r, buf, sizeof buf, MSG_DONTWAIT, NULL, NULL));
    send_to(x, "sendto third", s, "third", 5, 0);
    wait_mask(x, "receiver mask third", r, IO, POLLIN, 2000);
    struct sockaddr_storage from;
    memset(&from, 0, sizeof from);
    socklen_t flen = 4;
    RC("recvfrom 4-byte address buffer", x->c->recvfrom(r, buf, sizeof buf, MSG_DONTWAIT, (void *)&from, &flen));
    rec_addr(x, "  truncated address", (void *)&from, flen);
    send_to(x, "reply", r, "back", 4, 1);
    wait_mask(x, "sender mask", s, IO, POLLIN, 2000);
    recv_from(x, "sender recvfrom", s, 64, 0);
    poll_mask(x, "receiver mask empty", r, IO, 0);
    RC("recvfrom empty", x->c->recvfrom(r, buf, sizeof buf, MSG_DONTWAIT, NULL, NULL));
    x->c->close(r);
    x->c->close(s);
}

static void unbound_sender(struct ctx *x) {
    int r = bound(x, "receiver", 0);
    int s = udp_socket(x, "unbound sender");
    rec_sockname(x, "getsockname before", s);
    send_to(x, "sendto", s, "ping", 4, 0);
    wait_mask(x, "receiver mask", r, IO, POLLIN, 2000);
    struct sockaddr_storage from;
    socklen_t flen = sizeof from;
    char buf[16];
    RC("recvfrom", x->c->recvfrom(r, buf, sizeof buf, MSG_DONTWAIT, (void *)&from, &flen));
    rec_addr(x, "  from", (void *)&from, flen);
    struct sockaddr_storage me;
    own_name(x, s, &me);
    rec_note("source port is the sender's port", "%d", port_of(&me) == port_of(&from) && port_of(&me) != 0);
    RC("reply to the source", x->c->sendto(r, "pong", 4, 0, (void *)&from, flen));
    wait_mask(x, "sender mask", s, IO, POLLIN, 2000);
    recv_from(x, "sender recvfrom", s, 16, 0);
    x->c->close(r);
    x->c->close(s);
}

static void connected_send_recv(struct ctx *x) {
    int a = bound(x, "a", 0);
    int b = bound(x, "b", 1);
    connect_to(x, "a connect b", a, 1);
    connect_to(x, "b connect a", b, 0);
    rec_peername(x, "a getpeername", a);
    rec_sockname(x, "a getsockname", a);
    RC("a send", x->c->send(a, "one", 3, 0));
    wait_mask(x, "b mask", b, IO, POLLIN, 2000);
    recv_data(x, "b recv", b, 16, MSG_DONTWAIT);
    RC("b write", x->c->write(b, "two", 3));
    wait_mask(x, "a mask", a, IO, POLLIN, 2000);
    char buf[16];
    memset(buf, 0, sizeof buf);
    RC("a read", x->c->read(a, buf, sizeof buf));
    rec_note("  data", "%.3s", buf);
    RC("a send with NULL sendto address", x->c->sendto(a, "three", 5, 0, NULL, 0));
    wait_mask(x, "b mask again", b, IO, POLLIN, 2000);
    recv_from(x, "b recvfrom", b, 16, 0);
    x->c->close(a);
    x->c->close(b);
}

static void write_read(struct ctx *x) {
    int a = bound(x, "a", 0);
    int b = bound(x, "b", 1);
    RC("write unconnected", x->c->write(a, "x", 1));
    connect_to(x, "connect", a, 1);
    RC("write", x->c->write(a, "abcdef", 6));
    RC("write 0 bytes", x->c->write(a, "", 0));
    wait_mask(x, "b mask", b, IO, POLLIN, 2000);
    char buf[16];
    memset(buf, 0, sizeof buf);
    RC("read (unconnected reader)", x->c->read(b, buf, 4));
    rec_note("  data", "%.4s", buf);
    wait_mask(x, "b mask (empty datagram)", b, IO, POLLIN, 2000);
    RC("read empty datagram", x->c->read(b, buf, sizeof buf));
    x->c->close(a);
    x->c->close(b);
}

static void iovecs(struct ctx *x) {
    int r = bound(x, "receiver", 0);
    int s = bound(x, "sender", 1);
    struct sockaddr_storage to;
    socklen_t tlen = lo(x, 0, &to);
    struct iovec out[4] = {{"abc", 3}, {"", 0}, {"defgh", 5}, {"ij", 2}};
    struct msghdr m = {.msg_name = &to, .msg_namelen = tlen, .msg_iov = out, .msg_iovlen = 4};
    RC("sendmsg 4 iovecs", x->c->sendmsg(s, &m, 0));
    wait_mask(x, "mask", r, IO, POLLIN, 2000);
    char a[4] = {0}, b[3] = {0}, c[20] = {0};
    struct iovec in[3] = {{a, 4}, {b, 3}, {c, 20}};
    struct sockaddr_storage from;
    memset(&from, 0, sizeof from);
    struct msghdr r1 = {.msg_name = &from, .msg_namelen = sizeof from, .msg_iov = in, .msg_iovlen = 3, .msg_flags = -1};
    RC("recvmsg 3 iovecs", x->c->recvmsg(r, &r1, MSG_DONTWAIT));
    rec_note("  data", "%.4s|%.3s|%.3s flags=%d", a, b, c, r1.msg_flags);
    rec_addr(x, "  msg_name", (void *)&from, r1.msg_namelen);

    /* Truncation: two iovecs of 2 bytes for a 10-byte datagram. */
    struct iovec out2 = {"0123456789", 10};
    struct msghdr m2 = {.msg_name = &to, .msg_namelen = tlen, .msg_iov = &out2, .msg_iovlen = 1};
    RC("sendmsg 10 bytes", x->c->sendmsg(s, &m2, 0));
    wait_mask(x, "mask 2", r, IO, POLLIN, 2000);
    char p[2], q[2];
    struct iovec small[2] = {{p, 2}, {q, 2}};
    struct msghdr r2 = {.msg_iov = small, .msg_iovlen = 2, .msg_namelen = 77};
    RC("recvmsg into 4 bytes", x->c->recvmsg(r, &r2, MSG_DONTWAIT));
    rec_note("  data", "%.2s|%.2s flags=%s namelen=%u", p, q, (r2.msg_flags & MSG_TRUNC) ? "MSG_TRUNC" : "0",
             (unsigned)r2.msg_namelen);
    poll_mask(x, "rest discarded", r, IO, 0);

    /* MSG_TRUNC in the call: the full length; a short msg_namelen. */
    RC("sendmsg again", x->c->sendmsg(s, &m2, 0));
    wait_mask(x, "mask 3", r, IO, POLLIN, 2000);
    memset(&from, 0, sizeof from);
    struct msghdr r3 = {.msg_name = &from, .msg_namelen = 6, .msg_iov = small, .msg_iovlen = 1};
    RC("recvmsg MSG_TRUNC into 2 bytes", x->c->recvmsg(r, &r3, MSG_DONTWAIT | MSG_TRUNC));
    rec_note("  flags", "%s", (r3.msg_flags & MSG_TRUNC) ? "MSG_TRUNC" : "0");
    rec_addr(x, "  msg_name (6 bytes room)", (void *)&from, r3.msg_namelen);

    /* sendmsg without an address on an unconnected socket; with an address on a connected one. */
    struct msghdr m4 = {.msg_iov = out, .msg_iovlen = 1};
    RC("sendmsg no address unconnected", x->c->sendmsg(s, &m4, 0));
    connect_to(x, "connect", s, 0);
    RC("sendmsg no address connected", x->c->sendmsg(s, &m4, 0));
    wait_mask(x, "mask 4", r, IO, POLLIN, 2000);
    recv_from(x, "recvfrom", r, 16, 0);
    x->c->close(r);
    x->c->close(s);
}

static void datagram_boundaries(struct ctx *x) {
    int r = bound(x, "receiver", 0);
    int s = bound(x, "sender", 1);
    send_to(x, "sendto 1", s, "a", 1, 0);
    send_to(x, "sendto 2", s, "bbbbb", 5, 0);
    send_to(x, "sendto 3", s, "ccc", 3, 0);
    sleep_ms(50);
    wait_mask(x, "mask", r, IO, POLLIN, 2000);
    recv_data(x, "recv 1", r, 64, MSG_DONTWAIT);
    wait_mask(x, "mask 2", r, IO, POLLIN, 2000);
    recv_data(x, "recv 2", r, 64, MSG_DONTWAIT);
    wait_mask(x, "mask 3", r, IO, POLLIN, 2000);
    recv_data(x, "recv 3", r, 64, MSG_DONTWAIT);
    recv_data(x, "recv 4 (empty)", r, 64, MSG_DONTWAIT);
    x->c->close(r);
    x->c->close(s);
}

struct sender { struct ctx *x; int fd; int port; };
static void do_sendto(void *p) {
    struct sender *s = p;
    struct sockaddr_storage ss;
    socklen_t len = loopback(s->x, 0, s->x->port[s->port], &ss);
    s->x->c->sendto(s->fd, "late", 4, 0, (void *)&ss, len);
}

static void blocking_recv(struct ctx *x) {
    int r = bound(x, "receiver", 0);
    int s = bound(x, "sender", 1);
    set_rcvtimeo(x, r, 3000);
    struct sender snd = {x, s, 0};
    void *t = later(100, do_sendto, &snd);
    recv_data(x, "blocking recv gets the later datagram", r, 16, 0);
    join_later(t);
    x->c->close(r);
    x->c->close(s);
}

/* ---------------- local and peer names ---------------- */

static void getsockname_after_connect(struct ctx *x) {
    int r = bound(x, "receiver", 0);
    int s = udp_socket(x, "unbound socket");
    rec_sockname(x, "getsockname fresh", s);
    rec_peername(x, "getpeername fresh", s);
    connect_to(x, "connect", s, 0);
    rec_sockname(x, "getsockname after connect", s);
    rec_peername(x, "getpeername after connect", s);
    RC("send", x->c->send(s, "x", 1, 0));
    wait_mask(x, "receiver mask", r, IO, POLLIN, 2000);
    struct sockaddr_storage me, from;
    own_name(x, s, &me);
    socklen_t flen = sizeof from;
    RC("recvfrom", x->c->recvfrom(r, (char[4]){0}, 4, MSG_DONTWAIT, (void *)&from, &flen));
    rec_addr(x, "  from", (void *)&from, flen);
    rec_note("source port is getsockname's port", "%d", port_of(&me) == port_of(&from));
    x->c->close(r);
    x->c->close(s);
}

static void getsockname_any_then_connect(struct ctx *x) {
    int r = bound(x, "receiver", 0);
    struct sockaddr_storage ss;
    int s = udp_socket(x, "socket");
    socklen_t len = any_addr(x, 0, x->port[1], &ss);
    RC("bind any:P1", x->c->bind(s, (void *)&ss, len));
    rec_sockname(x, "getsockname bound to any", s);
    connect_to(x, "connect", s, 0);
    rec_sockname(x, "getsockname after connect", s);
    RC("send", x->c->send(s, "x", 1, 0));
    wait_mask(x, "receiver mask", r, IO, POLLIN, 2000);
    recv_from(x, "recvfrom", r, 4, 0);
    struct sockaddr unspec = {.sa_family = AF_UNSPEC};
    RC("connect AF_UNSPEC", x->c->connect(s, &unspec, sizeof unspec));
    rec_sockname(x, "getsockname after dissolving", s);
    x->c->close(r);
    x->c->close(s);
}

static void getsockname_after_sendto(struct ctx *x) {
    int r = bound(x, "receiver", 0);
    for (int i = 0; i < 8; i++) {
        int s = udp_socket(x, "fresh socket");
        send_to(x, "first sendto", s, "e", 1, 0);
        rec_sockname(x, "getsockname right after", s);
        struct sockaddr_storage me;
        own_name(x, s, &me);
        rec_note("  port nonzero", "%d", port_of(&me) != 0);
        wait_mask(x, "receiver mask", r, IO, POLLIN, 2000);
        RC("drain", x->c->recv(r, (char[4]){0}, 4, MSG_DONTWAIT));
        x->c->close(s);
    }
    x->c->close(r);
}

static void getsockname_after_send_then_recv(struct ctx *x) {
    /* An autobound socket keeps its port: a second sendto comes from the same port. */
    int r = bound(x, "receiver", 0);
    int s = udp_socket(x, "socket");
    send_to(x, "sendto 1", s, "1", 1, 0);
    send_to(x, "sendto 2", s, "2", 1, 0);
    unsigned short p[2] = {0, 0};
    for (int i = 0; i < 2; i++) {
        wait_mask(x, "receiver mask", r, IO, POLLIN, 2000);
        struct sockaddr_storage from;
        socklen_t flen = sizeof from;
        memset(&from, 0, sizeof from);
        RC("recvfrom", x->c->recvfrom(r, (char[4]){0}, 4, MSG_DONTWAIT, (void *)&from, &flen));
        p[i] = port_of(&from);
    }
    rec_note("same source port", "%d", p[0] == p[1] && p[0] != 0);
    struct sockaddr_storage me;
    own_name(x, s, &me);
    rec_note("getsockname port is the source port", "%d", port_of(&me) == p[0]);
    x->c->close(r);
    x->c->close(s);
}

/* ---------------- ICMP port unreachable ---------------- */

static void refused_so_error(struct ctx *x) {
    int s = udp_socket(x, "socket");
    connect_to(x, "connect to a closed port", s, 1);
    RC("send", x->c->send(s, "x", 1, 0));
    wait_mask(x, "mask after the ICMP error", s, IO, POLLERR, 2000);
    rec_soerror(x, "SO_ERROR", s);
    rec_soerror(x, "SO_ERROR again", s);
    poll_mask(x, "mask after SO_ERROR", s, IO, 0);
    RC("recv after SO_ERROR cleared it", x->c->recv(s, (char[4]){0}, 4, MSG_DONTWAIT));
    x->c->close(s);
}

static void refused_recv(struct ctx *x) {
    int s = udp_socket(x, "socket");
    connect_to(x, "connect to a closed port", s, 1);
    RC("send", x->c->send(s, "x", 1, 0));
    wait_mask(x, "mask", s, IO, POLLERR, 2000);
    RC("recv", x->c->recv(s, (char[4]){0}, 4, MSG_DONTWAIT));
    RC("recv again", x->c->recv(s, (char[4]){0}, 4, MSG_DONTWAIT));
    rec_soerror(x, "SO_ERROR", s);
    poll_mask(x, "mask after", s, IO, 0);
    x->c->close(s);
}

static void refused_blocking_recv(struct ctx *x) {
    int s = udp_socket(x, "socket");
    set_rcvtimeo(x, s, 1500);
    connect_to(x, "connect to a closed port", s, 1);
    RC("send", x->c->send(s, "x", 1, 0));
    RC("blocking recv is woken by the error", x->c->recv(s, (char[4]){0}, 4, 0));
    x->c->close(s);
}

static void refused_send(struct ctx *x) {
    int s = udp_socket(x, "socket");
    connect_to(x, "connect to a closed port", s, 1);
    RC("send", x->c->send(s, "x", 1, 0));
    wait_mask(x, "mask", s, IO, POLLERR, 2000);
    RC("send reports the error", x->c->send(s, "y", 1, 0));
    RC("send after", x->c->send(s, "z", 1, 0));
    wait_mask(x, "mask after the second error", s, IO, POLLERR, 2000);
    rec_soerror(x, "SO_ERROR", s);
    x->c->close(s);
}

static void refused_then_reconnect(struct ctx *x) {
    int r = bound(x, "receiver", 0);
    int s = udp_socket(x, "socket");
    connect_to(x, "connect to a closed port", s, 1);
    RC("send", x->c->send(s, "x", 1, 0));
    wait_mask(x, "mask", s, IO, POLLERR, 2000);
    connect_to(x, "connect to the receiver", s, 0);
    poll_mask(x, "mask after reconnect", s, IO, 0);
    RC("send (the old error is still pending)", x->c->send(s, "ok", 2, 0));
    rec_soerror(x, "SO_ERROR", s);
    RC("send again", x->c->send(s, "ok", 2, 0));
    wait_mask(x, "receiver mask", r, IO, POLLIN, 2000);
    recv_data(x, "recv", r, 8, MSG_DONTWAIT);
    x->c->close(r);
    x->c->close(s);
}

static void unconnected_no_error(struct ctx *x) {
    int s = bound(x, "socket", 0);
    send_to(x, "sendto a closed port", s, "x", 1, 1);
    poll_mask(x, "mask (no error expected)", s, IO, 200);
    RC("recv DONTWAIT", x->c->recv(s, (char[4]){0}, 4, MSG_DONTWAIT));
    rec_soerror(x, "SO_ERROR", s);
    send_to(x, "sendto again", s, "x", 1, 1);
    poll_mask(x, "mask again", s, IO, 200);
    RC("recvfrom DONTWAIT", x->c->recvfrom(s, (char[4]){0}, 4, MSG_DONTWAIT, NULL, NULL));
    x->c->close(s);
}

/* ---------------- shutdown ---------------- */

static void shut_wr(struct ctx *x) {
    int r = bound(x, "receiver", 0);
    int s = udp_socket(x, "socket");
    connect_to(x, "connect", s, 0);
    RC("SHUT_WR", x->c->shutdown(s, SHUT_WR));
    poll_mask(x, "own mask", s, IO, 0);
    RC("send after SHUT_WR", x->c->send(s, "x", 1, 0));
    send_to(x, "sendto after SHUT_WR", s, "x", 1, 0);
    poll_mask(x, "receiver gets nothing", r, IO, 200);
    struct sockaddr_storage me;
    socklen_t mlen = own_name(x, s, &me);
    RC("receiver replies", x->c->sendto(r, "in", 2, 0, (void *)&me, mlen));
    wait_mask(x, "own mask with data", s, IO, POLLIN, 2000);
    recv_data(x, "recv still works", s, 8, MSG_DONTWAIT);
    RC("SHUT_WR again", x->c->shutdown(s, SHUT_WR));
    x->c->close(r);
    x->c->close(s);
}

static void shut_rd(struct ctx *x) {
    int r = bound(x, "peer", 0);
    int s = bound(x, "socket", 1);
    connect_to(x, "connect", s, 0);
    RC("SHUT_RD", x->c->shutdown(s, SHUT_RD));
    poll_mask(x, "own mask", s, IO, 0);
    RC("recv DONTWAIT after SHUT_RD", x->c->recv(s, (char[8]){0}, 8, MSG_DONTWAIT));
    set_rcvtimeo(x, s, 500);
    RC("blocking recv after SHUT_RD", x->c->recv(s, (char[8]){0}, 8, 0));
    send_to(x, "peer sends", r, "late", 4, 1);
    sleep_ms(100);
    poll_mask(x, "mask with data after SHUT_RD", s, IO, 0);
    recv_data(x, "recv data that came after SHUT_RD", s, 8, MSG_DONTWAIT);
    RC("send still works", x->c->send(s, "ok", 2, 0));
    wait_mask(x, "peer mask", r, IO, POLLIN, 2000);
    recv_data(x, "peer recv", r, 8, MSG_DONTWAIT);
    x->c->close(r);
    x->c->close(s);
}

static void shut_rdwr(struct ctx *x) {
    int r = bound(x, "peer", 0);
    int s = bound(x, "socket", 1);
    connect_to(x, "connect", s, 0);
    RC("SHUT_RDWR", x->c->shutdown(s, SHUT_RDWR));
    poll_mask(x, "own mask", s, IO, 0);
    poll_mask(x, "own mask, no events asked", s, 0, 0);
    RC("send", x->c->send(s, "x", 1, 0));
    RC("recv DONTWAIT", x->c->recv(s, (char[8]){0}, 8, MSG_DONTWAIT));
    rec_soerror(x, "SO_ERROR", s);
    rec_peername(x, "getpeername", s);
    poll_mask(x, "peer gets nothing", r, IO, 200);
    RC("SHUT_RD after SHUT_RDWR", x->c->shutdown(s, SHUT_RD));
    x->c->close(r);
    x->c->close(s);
}

static void shutdown_unconnected(struct ctx *x) {
    int s = udp_socket(x, "socket");
    RC("shutdown bad how", x->c->shutdown(s, 7));
    RC("shutdown how -1", x->c->shutdown(s, -1));
    RC("SHUT_RD unconnected", x->c->shutdown(s, SHUT_RD));
    RC("SHUT_WR unconnected", x->c->shutdown(s, SHUT_WR));
    RC("SHUT_RDWR unconnected", x->c->shutdown(s, SHUT_RDWR));
    int b = bound(x, "bound socket", 0);
    RC("SHUT_RDWR bound, unconnected", x->c->shutdown(b, SHUT_RDWR));
    int c = udp_socket(x, "connected socket");
    connect_to(x, "connect", c, 0);
    RC("shutdown bad how connected", x->c->shutdown(c, 3));
    poll_mask(x, "connected mask after bad how", c, IO, 0);
    x->c->close(s);
    x->c->close(b);
    x->c->close(c);
}

static void shutdown_unconnected_effects(struct ctx *x) {
    /* Linux records the shutdown even when it answers ENOTCONN (a documented hack to wake pollers). */
    int r = bound(x, "receiver", 0);
    int s = bound(x, "socket", 1);
    RC("SHUT_RDWR unconnected", x->c->shutdown(s, SHUT_RDWR));
    poll_mask(x, "mask after", s, IO, 0);
    send_to(x, "sendto after", s, "x", 1, 0);
    poll_mask(x, "receiver mask", r, IO, 200);
    x->c->close(r);
    x->c->close(s);
}

/* ---------------- connect ---------------- */

static void connect_unspec(struct ctx *x) {
    int r = bound(x, "receiver", 0);
    int s = udp_socket(x, "socket");
    connect_to(x, "connect", s, 0);
    rec_peername(x, "getpeername", s);
    struct sockaddr unspec = {.sa_family = AF_UNSPEC};
    RC("connect AF_UNSPEC", x->c->connect(s, &unspec, sizeof unspec));
    rec_peername(x, "getpeername after", s);
    rec_sockname(x, "getsockname after (autobound port)", s);
    RC("send after", x->c->send(s, "x", 1, 0));
    RC("write after", x->c->write(s, "x", 1));
    send_to(x, "sendto works", s, "y", 1, 0);
    wait_mask(x, "receiver mask", r, IO, POLLIN, 2000);
    recv_data(x, "recv", r, 4, MSG_DONTWAIT);
    RC("connect AF_UNSPEC again", x->c->connect(s, &unspec, sizeof unspec));
    RC("connect AF_UNSPEC short length", x->c->connect(s, &unspec, 1));
    x->c->close(r);
    x->c->close(s);
}

static void send_unconnected(struct ctx *x) {
    int s = udp_socket(x, "socket");
    RC("send unconnected", x->c->send(s, "x", 1, 0));
    RC("sendto NULL address", x->c->sendto(s, "x", 1, 0, NULL, 0));
    struct iovec v = {"x", 1};
    struct msghdr m = {.msg_iov = &v, .msg_iovlen = 1};
    RC("sendmsg no address", x->c->sendmsg(s, &m, 0));
    rec_peername(x, "getpeername", s);
    rec_sockname(x, "getsockname after the failed sends", s);
    RC("recv unconnected unbound DONTWAIT", x->c->recv(s, (char[4]){0}, 4, MSG_DONTWAIT));
    x->c->close(s);
}

static void reconnect(struct ctx *x) {
    int r1 = bound(x, "receiver 1", 0);
    int r2 = bound(x, "receiver 2", 1);
    int s = bound(x, "socket", 2);
    connect_to(x, "connect 1", s, 0);
    RC("send 1", x->c->send(s, "one", 3, 0));
    connect_to(x, "connect 2 without dissolving", s, 1);
    rec_peername(x, "getpeername", s);
    rec_sockname(x, "getsockname", s);
    RC("send 2", x->c->send(s, "two", 3, 0));
    wait_mask(x, "receiver 1 mask", r1, IO, POLLIN, 2000);
    recv_data(x, "receiver 1 recv", r1, 8, MSG_DONTWAIT);
    wait_mask(x, "receiver 2 mask", r2, IO, POLLIN, 2000);
    recv_data(x, "receiver 2 recv", r2, 8, MSG_DONTWAIT);
    poll_mask(x, "receiver 1 has nothing more", r1, IO, 100);
    x->c->close(r1);
    x->c->close(r2);
    x->c->close(s);
}

static void connected_filters(struct ctx *x) {
    int r = bound(x, "receiver", 0);
    int s1 = bound(x, "peer", 1);
    int s2 = bound(x, "stranger", 2);
    connect_to(x, "receiver connects to peer", r, 1);
    send_to(x, "stranger sends", s2, "no", 2, 0);
    send_to(x, "peer sends", s1, "yes", 3, 0);
    wait_mask(x, "receiver mask", r, IO, POLLIN, 2000);
    recv_from(x, "recvfrom", r, 8, 0);
    poll_mask(x, "nothing from the stranger", r, IO, 200);
    RC("recv DONTWAIT", x->c->recv(r, (char[4]){0}, 4, MSG_DONTWAIT));
    x->c->close(r);
    x->c->close(s1);
    x->c->close(s2);
}

static void connect_keeps_queued(struct ctx *x) {
    /* A datagram queued before connect() stays queued. */
    int r = bound(x, "receiver", 0);
    int s1 = bound(x, "peer", 1);
    int s2 = bound(x, "stranger", 2);
    send_to(x, "stranger sends before connect", s2, "early", 5, 0);
    wait_mask(x, "receiver mask", r, IO, POLLIN, 2000);
    connect_to(x, "receiver connects to peer", r, 1);
    fionread(x, "FIONREAD after connect", r);
    recv_from(x, "recvfrom", r, 8, 0);
    (void)s1;
    x->c->close(r);
    x->c->close(s1);
    x->c->close(s2);
}

static void connected_sendto_other(struct ctx *x) {
    int r1 = bound(x, "receiver 1", 0);
    int r2 = bound(x, "receiver 2", 1);
    int s = udp_socket(x, "socket");
    connect_to(x, "connect 1", s, 0);
    send_to(x, "sendto another address while connected", s, "other", 5, 1);
    wait_mask(x, "receiver 2 mask", r2, IO, POLLIN, 200);
    recv_data(x, "receiver 2 recv", r2, 8, MSG_DONTWAIT);
    send_to(x, "sendto the connected address", s, "same", 4, 0);
    wait_mask(x, "receiver 1 mask", r1, IO, POLLIN, 2000);
    recv_data(x, "receiver 1 recv", r1, 8, MSG_DONTWAIT);
    rec_peername(x, "still connected", s);
    x->c->close(r1);
    x->c->close(r2);
    x->c->close(s);
}

static void connect_bad_addresses(struct ctx *x) {
    struct sockaddr_storage ss;
    int s = udp_socket(x, "socket");
    socklen_t len = lo(x, 0, &ss);
    RC("connect short length", x->c->connect(s, (void *)&ss, short_len(x)));
    RC("connect NULL", x->c->connect(s, NULL, len));
    if (x->family == AF_INET) ((struct sockaddr_in *)&ss)->sin_port = 0;
    else ((struct sockaddr_in6 *)&ss)->sin6_port = 0;
    RC("connect port 0", x->c->connect(s, (void *)&ss, len));
    rec_peername(x, "getpeername after connecting to port 0", s);
    struct sockaddr_storage other;
    socklen_t olen = loopback(x, x->family == AF_INET ? AF_INET6 : AF_INET, x->port[0], &other);
    RC("connect other family", x->c->connect(s, (void *)&other, olen));
    rec_peername(x, "getpeername after", s);
    x->c->close(s);
}

static void sendto_bad_addresses(struct ctx *x) {
    int s = udp_socket(x, "socket");
    struct sockaddr_storage ss;
    socklen_t len = lo(x, 0, &ss);
    RC("sendto short length", x->c->sendto(s, "x", 1, 0, (void *)&ss, short_len(x)));
    RC("sendto address with length 0", x->c->sendto(s, "x", 1, 0, (void *)&ss, 0));
    if (x->family == AF_INET) ((struct sockaddr_in *)&ss)->sin_port = 0;
    else ((struct sockaddr_in6 *)&ss)->sin6_port = 0;
    RC("sendto port 0", x->c->sendto(s, "x", 1, 0, (void *)&ss, len));
    if (x->family == AF_INET) {
        struct sockaddr_in6 v6;
        loopback(x, AF_INET6, x->port[0], (void *)&ss);
        memcpy(&v6, &ss, sizeof v6);
        RC("sendto an IPv6 address from IPv4", x->c->sendto(s, "x", 1, 0, (void *)&v6, sizeof v6));
    } else {
        struct sockaddr_in6 *in6 = (void *)&ss;
        lo(x, 0, &ss);
        in6->sin6_family = 12345;
        RC("sendto an unknown family", x->c->sendto(s, "x", 1, 0, (void *)&ss, len));
    }
    rec_sockname(x, "getsockname after failed sends", s);
    x->c->close(s);
}

/* ---------------- truncation, peeking, readiness ---------------- */

static void truncate_small_buffer(struct ctx *x) {
    int r = bound(x, "receiver", 0);
    int s = bound(x, "sender", 1);
    send_to(x, "sendto 10", s, "0123456789", 10, 0);
    send_to(x, "sendto 3", s, "abc", 3, 0);
    wait_mask(x, "mask", r, IO, POLLIN, 2000);
    recv_data(x, "recv 4 of 10", r, 4, MSG_DONTWAIT);
    wait_mask(x, "mask 2", r, IO, POLLIN, 2000);
    recv_data(x, "next recv gets the next datagram", r, 16, MSG_DONTWAIT);
    send_to(x, "sendto 10 again", s, "0123456789", 10, 0);
    wait_mask(x, "mask 3", r, IO, POLLIN, 2000);
    char buf[4];
    RC("recv MSG_TRUNC into 4", x->c->recv(r, buf, sizeof buf, MSG_TRUNC | MSG_DONTWAIT));
    rec_note("  data", "%.4s", buf);
    RC("recv empty", x->c->recv(r, buf, sizeof buf, MSG_DONTWAIT));
    x->c->close(r);
    x->c->close(s);
}

static void peek(struct ctx *x) {
    int r = bound(x, "receiver", 0);
    int s = bound(x, "sender", 1);
    send_to(x, "sendto", s, "peekaboo", 8, 0);
    wait_mask(x, "mask", r, IO, POLLIN, 2000);
    recv_data(x, "peek 4", r, 4, MSG_PEEK | MSG_DONTWAIT);
    char buf[16];
    RC("peek MSG_TRUNC 2", x->c->recv(r, buf, 2, MSG_PEEK | MSG_TRUNC | MSG_DONTWAIT));
    recv_from(x, "peek recvfrom", r, 16, MSG_PEEK);
    fionread(x, "FIONREAD after peeks", r);
    memset(buf, 0, sizeof buf);
    RC("read", x->c->read(r, buf, sizeof buf));
    rec_note("  data", "%.8s", buf);
    poll_mask(x, "mask after", r, IO, 0);
    RC("peek empty", x->c->recv(r, buf, sizeof buf, MSG_PEEK | MSG_DONTWAIT));
    x->c->close(r);
    x->c->close(s);
}

static void zero_length(struct ctx *x) {
    int r = bound(x, "receiver", 0);
    int s = bound(x, "sender", 1);
    send_to(x, "sendto 0 bytes", s, "", 0, 0);
    wait_mask(x, "mask with an empty datagram", r, IO, POLLIN, 2000);
    fionread(x, "FIONREAD", r);
    recv_from(x, "recvfrom empty datagram", r, 16, 0);
    poll_mask(x, "mask after", r, IO, 0);
    RC("recv DONTWAIT", x->c->recv(r, (char[4]){0}, 4, MSG_DONTWAIT));
    connect_to(x, "connect", s, 0);
    RC("send 0 bytes connected", x->c->send(s, "", 0, 0));
    struct msghdr m = {0};
    RC("sendmsg no iovecs", x->c->sendmsg(s, &m, 0));
    wait_mask(x, "mask", r, IO, POLLIN, 2000);
    RC("recv 1", x->c->recv(r, (char[4]){0}, 4, MSG_DONTWAIT));
    wait_mask(x, "mask 2", r, IO, POLLIN, 2000);
    RC("recv 2", x->c->recv(r, (char[4]){0}, 4, MSG_DONTWAIT));
    x->c->close(r);
    x->c->close(s);
}

static void recv_len_zero(struct ctx *x) {
    int r = bound(x, "receiver", 0);
    int s = bound(x, "sender", 1);
    RC("recv 0 bytes DONTWAIT empty", x->c->recv(r, NULL, 0, MSG_DONTWAIT));
    send_to(x, "sendto", s, "abc", 3, 0);
    send_to(x, "sendto 2", s, "defg", 4, 0);
    wait_mask(x, "mask", r, IO, POLLIN, 2000);
    RC("recv 0 bytes consumes the datagram", x->c->recv(r, (char[1]){0}, 0, MSG_DONTWAIT));
    wait_mask(x, "mask 2", r, IO, POLLIN, 2000);
    recv_data(x, "recv gets the second datagram", r, 8, MSG_DONTWAIT);
    send_to(x, "sendto 3", s, "hij", 3, 0);
    wait_mask(x, "mask 3", r, IO, POLLIN, 2000);
    RC("recv 0 bytes MSG_TRUNC", x->c->recv(r, (char[1]){0}, 0, MSG_TRUNC | MSG_DONTWAIT));
    RC("recv empty", x->c->recv(r, (char[4]){0}, 4, MSG_DONTWAIT));
    x->c->close(r);
    x->c->close(s);
}

static void fionread_sizes(struct ctx *x) {
    int r = bound(x, "receiver", 0);
    int s = bound(x, "sender", 1);
    fionread(x, "FIONREAD empty", r);
    send_to(x, "sendto 3", s, "abc", 3, 0);
    send_to(x, "sendto 7", s, "defghij", 7, 0);
    sleep_ms(50);
    wait_mask(x, "mask", r, IO, POLLIN, 2000);
    fionread(x, "FIONREAD (the next datagram)", r);
    RC("recv", x->c->recv(r, (char[16]){0}, 16, MSG_DONTWAIT));
    wait_mask(x, "mask 2", r, IO, POLLIN, 2000);
    fionread(x, "FIONREAD after one", r);
    RC("recv", x->c->recv(r, (char[16]){0}, 16, MSG_DONTWAIT));
    fionread(x, "FIONREAD drained", r);
    int n = -1;
    RC("SIOCOUTQ", x->c->ioctl(s, SIOCOUTQ, &n));
    x->c->close(r);
    x->c->close(s);
}

static void nonblocking(struct ctx *x) {
    int r = bound(x, "receiver", 0);
    char buf[8];
    RC("recv MSG_DONTWAIT empty", x->c->recv(r, buf, sizeof buf, MSG_DONTWAIT));
    RC("recvfrom MSG_DONTWAIT empty", x->c->recvfrom(r, buf, sizeof buf, MSG_DONTWAIT, NULL, NULL));
    rec_note("F_GETFL O_NONBLOCK", "%d", (x->c->fcntl(r, F_GETFL, 0) & O_NONBLOCK) != 0);
    RC("F_SETFL O_NONBLOCK", x->c->fcntl(r, F_SETFL, O_NONBLOCK));
    rec_note("F_GETFL O_NONBLOCK after", "%d", (x->c->fcntl(r, F_GETFL, 0) & O_NONBLOCK) != 0);
    RC("recv empty nonblocking", x->c->recv(r, buf, sizeof buf, 0));
    RC("read empty nonblocking", x->c->read(r, buf, sizeof buf));
    struct msghdr m = {.msg_iov = &(struct iovec){buf, sizeof buf}, .msg_iovlen = 1};
    RC("recvmsg empty nonblocking", x->c->recvmsg(r, &m, 0));
    RC("F_SETFL 0", x->c->fcntl(r, F_SETFL, 0));
    RC("FIONBIO 1", x->c->ioctl(r, FIONBIO, &(int){1}));
    rec_note("F_GETFL O_NONBLOCK after FIONBIO", "%d", (x->c->fcntl(r, F_GETFL, 0) & O_NONBLOCK) != 0);
    RC("recv after FIONBIO", x->c->recv(r, buf, sizeof buf, 0));
    int s = FD("SOCK_NONBLOCK socket", x->c->socket(x->family, SOCK_DGRAM | SOCK_NONBLOCK, 0));
    rec_note("F_GETFL O_NONBLOCK (SOCK_NONBLOCK)", "%d", (x->c->fcntl(s, F_GETFL, 0) & O_NONBLOCK) != 0);
    RC("recv on SOCK_NONBLOCK", x->c->recv(s, buf, sizeof buf, 0));
    send_to(x, "sendto nonblocking", s, "nb", 2, 0);
    wait_mask(x, "receiver mask", r, IO, POLLIN, 2000);
    recv_data(x, "recv", r, 8, 0);
    x->c->close(r);
    x->c->close(s);
}

static void rcvtimeo(struct ctx *x) {
    int r = bound(x, "receiver", 0);
    struct timeval tv = {0, 100000};
    RC("SO_RCVTIMEO 100 ms", x->c->setsockopt(r, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv));
    struct timeval got = {0, 0};
    socklen_t len = sizeof got;
    RC("get SO_RCVTIMEO", x->c->getsockopt(r, SOL_SOCKET, SO_RCVTIMEO, &got, &len));
    rec_note("  value", "%ld.%06ld len=%u", (long)got.tv_sec, (long)got.tv_usec, (unsigned)len);
    RC("recv times out", x->c->recv(r, (char[4]){0}, 4, 0));
    RC("recvfrom times out", x->c->recvfrom(r, (char[4]){0}, 4, 0, NULL, NULL));
    struct timeval zero = {0, 0};
    RC("SO_RCVTIMEO 0 (forever)", x->c->setsockopt(r, SOL_SOCKET, SO_RCVTIMEO, &zero, sizeof zero));
    struct timeval bad = {0, 2000000};
    RC("SO_RCVTIMEO bad usec", x->c->setsockopt(r, SOL_SOCKET, SO_RCVTIMEO, &bad, sizeof bad));
    x->c->close(r);
}

static void poll_masks(struct ctx *x) {
    int s = udp_socket(x, "fresh socket");
    poll_mask(x, "fresh unbound mask", s, IO, 0);
    poll_mask(x, "fresh mask, POLLIN only", s, POLLIN, 0);
    int r = bound(x, "receiver", 0);
    poll_mask(x, "bound idle mask", r, IO, 0);
    send_to(x, "sendto", s, "data", 4, 0);
    wait_mask(x, "mask with data", r, IO, POLLIN, 2000);
    poll_mask(x, "mask with data, POLLOUT only", r, POLLOUT, 0);
    poll_mask(x, "mask with data, POLLPRI only", r, POLLPRI, 0);
    RC("recv", x->c->recv(r, (char[8]){0}, 8, MSG_DONTWAIT));
    poll_mask(x, "mask after reading", r, IO, 0);
    struct pollfd p[2] = {{r, IO, 0}, {s, IO, 0}};
    int rc = RC("poll both", x->c->poll(p, 2, 0));
    rec_note("  revents", "%#x %#x", rc >= 0 ? p[0].revents : -1, rc >= 0 ? p[1].revents : -1);
    RC("poll nothing ready times out", x->c->poll((struct pollfd[]){{r, POLLIN, 0}}, 1, 50));
    x->c->close(r);
    x->c->close(s);
}

static void poll_error_and_data(struct ctx *x) {
    /* A connected socket with a pending error and a datagram queued from its peer. */
    int r = bound(x, "peer", 0);
    int s = bound(x, "socket", 1);
    connect_to(x, "connect to peer", s, 0);
    RC("close peer", x->c->close(r));
    RC("send to the closed peer", x->c->send(s, "x", 1, 0));
    wait_mask(x, "mask with error", s, IO, POLLERR, 2000);
    poll_mask(x, "mask with error, no events asked", s, 0, 0);
    RC("recv takes the error", x->c->recv(s, (char[4]){0}, 4, MSG_DONTWAIT));
    poll_mask(x, "mask after", s, IO, 0);
    x->c->close(s);
}

/* ---------------- sizes ---------------- */

/* Sends `size` bytes and, when that worked, receives them: one line either way. */
static void send_size(struct ctx *x, int s, int r, int size, int connected) {
    static char big[70000], in[70000];
    for (size_t i = 0; i < sizeof big; i++) big[i] = (char)(i * 13 + 1);
    struct sockaddr_storage ss;
    socklen_t len = lo(x, 0, &ss);
    char label[64];
    snprintf(label, sizeof label, "%s %d", connected ? "send" : "sendto", size);
    errno = 0;
    long rc = connected ? x->c->send(s, big, (size_t)size, 0) : x->c->sendto(s, big, (size_t)size, 0, (void *)&ss, len);
    if (rc < 0) { rec_rc(label, rc, errno); return; }
    long n = -1;
    for (int t = 0; t < 100; t++) {
        struct pollfd p = {r, POLLIN, 0};
        if (x->c->poll(&p, 1, 20) > 0) break;
    }
    n = x->c->recv(r, in, sizeof in, MSG_DONTWAIT);
    rec_note(label, "%ld, received %ld%s", rc, n, n == size && memcmp(in, big, (size_t)size) == 0 ? " same bytes" : "");
}

static void msgsize(struct ctx *x) {
    int r = bound(x, "receiver", 0);
    int s = bound(x, "sender", 1);
    int sizes[] = {1472, 8192, 65487, 65488, 65507, 65508, 65527, 65528, 70000};
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) send_size(x, s, r, sizes[k], 0);
    connect_to(x, "connect", s, 0);
    send_size(x, s, r, 65507, 1);
    send_size(x, s, r, 65508, 1);
    x->c->close(r);
    x->c->close(s);
}

static void small_rcvbuf(struct ctx *x) {
    /* socket(7): SO_RCVBUF is doubled; udp(7): datagrams that do not fit the receive buffer are dropped
     * (an empty queue still takes one). */
    int r = bound(x, "receiver", 0);
    int s = bound(x, "sender", 1);
    static char big[60000];
    set_intopt(x, "receiver SO_RCVBUF 4096", r, SOL_SOCKET, SO_RCVBUF, 4096);
    rec_intopt(x, "SO_RCVBUF get", r, SOL_SOCKET, SO_RCVBUF);
    send_to(x, "sendto 60000", s, big, sizeof big, 0);
    send_to(x, "sendto 60000 again", s, big, sizeof big, 0);
    send_to(x, "sendto small", s, "small", 5, 0);
    wait_mask(x, "receiver mask", r, IO, POLLIN, 2000);
    sleep_ms(100);
    static char in[65536];
    RC("recv 1", x->c->recv(r, in, sizeof in, MSG_DONTWAIT));
    poll_mask(x, "mask after (the others dropped)", r, IO, 100);
    RC("recv 2", x->c->recv(r, in, sizeof in, MSG_DONTWAIT));
    x->c->close(r);
    x->c->close(s);
}

/* ---------------- binding ---------------- */

static void bind_rules(struct ctx *x) {
    struct sockaddr_storage ss;
    int a = udp_socket(x, "socket");
    socklen_t len = any_addr(x, 0, 0, &ss);
    RC("bind any port 0", x->c->bind(a, (void *)&ss, len));
    rec_sockname(x, "getsockname", a);
    len = lo(x, 1, &ss);
    RC("bind again", x->c->bind(a, (void *)&ss, len));
    int b = udp_socket(x, "socket b");
    RC("bind short length", x->c->bind(b, (void *)&ss, short_len(x)));
    RC("bind length 0", x->c->bind(b, (void *)&ss, 0));
    RC("bind NULL", x->c->bind(b, NULL, len));
    struct sockaddr_storage other;
    socklen_t olen = loopback(x, x->family == AF_INET ? AF_INET6 : AF_INET, x->port[1], &other);
    RC("bind other family", x->c->bind(b, (void *)&other, olen));
    RC("bind other family, full length", x->c->bind(b, (void *)&other, sizeof(struct sockaddr_in6)));
    struct sockaddr_storage far;
    socklen_t flen;
    memset(&far, 0, sizeof far);
    if (x->family == AF_INET) {
        struct sockaddr_in *in = (void *)&far;
        flen = sizeof *in;
        in->sin_family = AF_INET;
        in->sin_port = htons(x->port[1]);
        in->sin_addr.s_addr = htonl(0x0a090909); /* 10.9.9.9: not ours */
    } else {
        struct sockaddr_in6 *in6 = (void *)&far;
        flen = sizeof *in6;
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons(x->port[1]);
        inet_pton(AF_INET6, "2001:db8::9", &in6->sin6_addr);
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
    int a = udp_socket(x, "socket a");
    RC("bind a", x->c->bind(a, (void *)&ss, len));
    int b = udp_socket(x, "socket b");
    RC("bind b same address", x->c->bind(b, (void *)&ss, len));
    socklen_t alen = any_addr(x, 0, x->port[0], &ss);
    RC("bind b any, same port", x->c->bind(b, (void *)&ss, alen));
    set_intopt(x, "b SO_REUSEADDR (a has none)", b, SOL_SOCKET, SO_REUSEADDR, 1);
    len = lo(x, 0, &ss);
    RC("bind b same address again", x->c->bind(b, (void *)&ss, len));
    rec_sockname(x, "getsockname b", b);
    RC("close a", x->c->close(a));
    RC("bind b after a closed", x->c->bind(b, (void *)&ss, len));
    x->c->close(b);
}

static void reuseaddr_share(struct ctx *x) {
    struct sockaddr_storage ss;
    socklen_t len = lo(x, 0, &ss);
    int a = udp_socket(x, "socket a");
    set_intopt(x, "a SO_REUSEADDR", a, SOL_SOCKET, SO_REUSEADDR, 1);
    rec_intopt(x, "a SO_REUSEADDR get", a, SOL_SOCKET, SO_REUSEADDR);
    RC("bind a", x->c->bind(a, (void *)&ss, len));
    int b = udp_socket(x, "socket b");
    set_intopt(x, "b SO_REUSEADDR", b, SOL_SOCKET, SO_REUSEADDR, 1);
    RC("bind b on the same address", x->c->bind(b, (void *)&ss, len));
    int s = udp_socket(x, "sender");
    send_to(x, "sendto the shared port", s, "shared", 6, 0);
    struct pollfd p[2];
    long deadline = 2000;
    int ready = 0;
    while (deadline > 0) {
        p[0] = (struct pollfd){a, POLLIN, 0};
        p[1] = (struct pollfd){b, POLLIN, 0};
        if (x->c->poll(p, 2, 20) > 0) break;
        deadline -= 20;
    }
    sleep_ms(100);
    p[0] = (struct pollfd){a, POLLIN, 0};
    p[1] = (struct pollfd){b, POLLIN, 0};
    x->c->poll(p, 2, 0);
    ready = !!(p[0].revents & POLLIN) + !!(p[1].revents & POLLIN);
    rec_note("sockets that received it", "%d", ready);
    x->c->close(a);
    x->c->close(b);
    x->c->close(s);
}

static void reuseport_share(struct ctx *x) {
    struct sockaddr_storage ss;
    socklen_t len = lo(x, 0, &ss);
    int a = udp_socket(x, "socket a");
    rec_intopt(x, "a SO_REUSEPORT default", a, SOL_SOCKET, SO_REUSEPORT);
    set_intopt(x, "a SO_REUSEPORT", a, SOL_SOCKET, SO_REUSEPORT, 1);
    rec_intopt(x, "a SO_REUSEPORT get", a, SOL_SOCKET, SO_REUSEPORT);
    RC("bind a", x->c->bind(a, (void *)&ss, len));
    int b = udp_socket(x, "socket b");
    set_intopt(x, "b SO_REUSEPORT", b, SOL_SOCKET, SO_REUSEPORT, 1);
    RC("bind b on the same address", x->c->bind(b, (void *)&ss, len));
    int c = udp_socket(x, "socket c (no SO_REUSEPORT)");
    RC("bind c on the same address", x->c->bind(c, (void *)&ss, len));
    set_intopt(x, "a SO_REUSEPORT 0 after bind", a, SOL_SOCKET, SO_REUSEPORT, 0);
    rec_intopt(x, "a SO_REUSEPORT get after", a, SOL_SOCKET, SO_REUSEPORT);
    x->c->close(a);
    x->c->close(b);
    x->c->close(c);
}

static void bind_any_receives(struct ctx *x) {
    struct sockaddr_storage ss;
    int r = udp_socket(x, "receiver");
    socklen_t len = any_addr(x, 0, x->port[0], &ss);
    RC("bind any:P0", x->c->bind(r, (void *)&ss, len));
    rec_sockname(x, "getsockname", r);
    int s = udp_socket(x, "sender");
    send_to(x, "sendto loopback:P0", s, "any", 3, 0);
    wait_mask(x, "receiver mask", r, IO, POLLIN, 2000);
    recv_from(x, "recvfrom", r, 8, 0);
    int l = udp_socket(x, "loopback socket on the same port");
    len = lo(x, 0, &ss);
    RC("bind loopback:P0 while any:P0 is bound", x->c->bind(l, (void *)&ss, len));
    x->c->close(r);
    x->c->close(s);
    x->c->close(l);
}

static void broadcast_refused(struct ctx *x) {
    int s = udp_socket(x, "socket");
    rec_intopt(x, "SO_BROADCAST default", s, SOL_SOCKET, SO_BROADCAST);
    struct sockaddr_in bc = {.sin_family = AF_INET, .sin_port = htons(x->port[0]), .sin_addr = {htonl(INADDR_BROADCAST)}};
    RC("sendto 255.255.255.255 without SO_BROADCAST", x->c->sendto(s, "b", 1, 0, (void *)&bc, sizeof bc));
    RC("connect 255.255.255.255 without SO_BROADCAST", x->c->connect(s, (void *)&bc, sizeof bc));
    x->c->close(s);
    int t = udp_socket(x, "another socket (never sends)");
    set_intopt(x, "SO_BROADCAST 1", t, SOL_SOCKET, SO_BROADCAST, 1);
    rec_intopt(x, "SO_BROADCAST get", t, SOL_SOCKET, SO_BROADCAST);
    set_intopt(x, "SO_BROADCAST 0", t, SOL_SOCKET, SO_BROADCAST, 0);
    rec_intopt(x, "SO_BROADCAST get after", t, SOL_SOCKET, SO_BROADCAST);
    x->c->close(t);
}

/* ---------------- options ---------------- */

static void option_defaults(struct ctx *x) {
    int a = udp_socket(x, "socket");
    rec_common_options(x, a);
    rec_intopt(x, "SO_BROADCAST", a, SOL_SOCKET, SO_BROADCAST);
    rec_intopt(x, "UDP_CORK", a, IPPROTO_UDP, UDP_CORK);
    if (x->family == AF_INET) {
        rec_intopt(x, "IP_MULTICAST_TTL", a, IPPROTO_IP, IP_MULTICAST_TTL);
        rec_intopt(x, "IP_MULTICAST_LOOP", a, IPPROTO_IP, IP_MULTICAST_LOOP);
    } else {
        rec_intopt(x, "IPV6_MULTICAST_HOPS", a, IPPROTO_IPV6, IPV6_MULTICAST_HOPS);
        rec_intopt(x, "IPV6_MULTICAST_LOOP", a, IPPROTO_IPV6, IPV6_MULTICAST_LOOP);
    }
    x->c->close(a);
}

static void option_setting(struct ctx *x) {
    int a = udp_socket(x, "socket");
    set_intopt(x, "SO_REUSEADDR 1", a, SOL_SOCKET, SO_REUSEADDR, 1);
    rec_intopt(x, "SO_REUSEADDR", a, SOL_SOCKET, SO_REUSEADDR);
    set_intopt(x, "SO_REUSEADDR 0", a, SOL_SOCKET, SO_REUSEADDR, 0);
    rec_intopt(x, "SO_REUSEADDR after 0", a, SOL_SOCKET, SO_REUSEADDR);
    set_intopt(x, "SO_REUSEPORT 1", a, SOL_SOCKET, SO_REUSEPORT, 1);
    rec_intopt(x, "SO_REUSEPORT", a, SOL_SOCKET, SO_REUSEPORT);
    set_intopt(x, "SO_REUSEADDR 5 (any nonzero)", a, SOL_SOCKET, SO_REUSEADDR, 5);
    rec_intopt(x, "SO_REUSEADDR after 5", a, SOL_SOCKET, SO_REUSEADDR);
    set_intopt(x, "SO_TYPE is read-only", a, SOL_SOCKET, SO_TYPE, SOCK_STREAM);
    if (x->family == AF_INET) {
        set_intopt(x, "IP_TTL 10", a, IPPROTO_IP, IP_TTL, 10);
        rec_intopt(x, "IP_TTL", a, IPPROTO_IP, IP_TTL);
        set_intopt(x, "IP_TTL -1 (default)", a, IPPROTO_IP, IP_TTL, -1);
        rec_intopt(x, "IP_TTL after -1", a, IPPROTO_IP, IP_TTL);
        set_intopt(x, "IP_TTL 0", a, IPPROTO_IP, IP_TTL, 0);
        set_intopt(x, "IP_TTL 256", a, IPPROTO_IP, IP_TTL, 256);
        set_intopt(x, "IP_TTL 255", a, IPPROTO_IP, IP_TTL, 255);
        rec_intopt(x, "IP_TTL after 255", a, IPPROTO_IP, IP_TTL);
        set_intopt(x, "IP_TOS 0x10", a, IPPROTO_IP, IP_TOS, 0x10);
        rec_intopt(x, "IP_TOS", a, IPPROTO_IP, IP_TOS);
        set_intopt(x, "IP_MULTICAST_TTL 5", a, IPPROTO_IP, IP_MULTICAST_TTL, 5);
        rec_intopt(x, "IP_MULTICAST_TTL", a, IPPROTO_IP, IP_MULTICAST_TTL);
        set_intopt(x, "IP_MULTICAST_TTL 256", a, IPPROTO_IP, IP_MULTICAST_TTL, 256);
        set_intopt(x, "IP_MULTICAST_TTL -1", a, IPPROTO_IP, IP_MULTICAST_TTL, -1);
        rec_intopt(x, "IP_MULTICAST_TTL after -1", a, IPPROTO_IP, IP_MULTICAST_TTL);
        unsigned char ttl8 = 20;
        RC("IP_TTL with a 1-byte value", x->c->setsockopt(a, IPPROTO_IP, IP_TTL, &ttl8, 1));
        rec_intopt(x, "IP_TTL after the 1-byte value", a, IPPROTO_IP, IP_TTL);
        unsigned char small = 0;
        socklen_t slen = 1;
        RC("get IP_TTL into 1 byte", x->c->getsockopt(a, IPPROTO_IP, IP_TTL, &small, &slen));
        rec_note("  value", "%u len=%u", small, (unsigned)slen);
    } else {
        set_intopt(x, "IPV6_UNICAST_HOPS 10", a, IPPROTO_IPV6, IPV6_UNICAST_HOPS, 10);
        rec_intopt(x, "IPV6_UNICAST_HOPS", a, IPPROTO_IPV6, IPV6_UNICAST_HOPS);
        set_intopt(x, "IPV6_UNICAST_HOPS -1", a, IPPROTO_IPV6, IPV6_UNICAST_HOPS, -1);
        rec_intopt(x, "IPV6_UNICAST_HOPS after -1", a, IPPROTO_IPV6, IPV6_UNICAST_HOPS);
        set_intopt(x, "IPV6_UNICAST_HOPS 256", a, IPPROTO_IPV6, IPV6_UNICAST_HOPS, 256);
        set_intopt(x, "IPV6_UNICAST_HOPS -2", a, IPPROTO_IPV6, IPV6_UNICAST_HOPS, -2);
        set_intopt(x, "IPV6_MULTICAST_HOPS 5", a, IPPROTO_IPV6, IPV6_MULTICAST_HOPS, 5);
        rec_intopt(x, "IPV6_MULTICAST_HOPS", a, IPPROTO_IPV6, IPV6_MULTICAST_HOPS);
        set_intopt(x, "IPV6_TCLASS 0x20", a, IPPROTO_IPV6, IPV6_TCLASS, 0x20);
        rec_intopt(x, "IPV6_TCLASS", a, IPPROTO_IPV6, IPV6_TCLASS);
        set_intopt(x, "IPV6_V6ONLY 1 before bind", a, IPPROTO_IPV6, IPV6_V6ONLY, 1);
        rec_intopt(x, "IPV6_V6ONLY", a, IPPROTO_IPV6, IPV6_V6ONLY);
        set_intopt(x, "IPV6_V6ONLY 0 before bind", a, IPPROTO_IPV6, IPV6_V6ONLY, 0);
        rec_intopt(x, "IPV6_V6ONLY after 0", a, IPPROTO_IPV6, IPV6_V6ONLY);
        short s16 = 1;
        RC("IPV6_UNICAST_HOPS with a 2-byte value", x->c->setsockopt(a, IPPROTO_IPV6, IPV6_UNICAST_HOPS, &s16, sizeof s16));
    }
    short s16 = 1;
    RC("SO_REUSEADDR with a 2-byte value", x->c->setsockopt(a, SOL_SOCKET, SO_REUSEADDR, &s16, sizeof s16));
    RC("SO_BROADCAST with a 2-byte value", x->c->setsockopt(a, SOL_SOCKET, SO_BROADCAST, &s16, sizeof s16));
    int v = 1;
    RC("unknown SOL_SOCKET option", x->c->setsockopt(a, SOL_SOCKET, 9999, &v, sizeof v));
    RC("unknown IP-level option", x->c->setsockopt(a, x->family == AF_INET ? IPPROTO_IP : IPPROTO_IPV6, 9999, &v, sizeof v));
    socklen_t len = sizeof v;
    RC("getsockopt unknown UDP option", x->c->getsockopt(a, IPPROTO_UDP, 9999, &v, &len));
    len = sizeof v;
    RC("getsockopt unknown level", x->c->getsockopt(a, 9999, 1, &v, &len));
    len = sizeof v;
    RC("getsockopt TCP option on UDP", x->c->getsockopt(a, IPPROTO_TCP, 1 /* TCP_NODELAY */, &v, &len));
    RC("setsockopt NULL value", x->c->setsockopt(a, SOL_SOCKET, SO_REUSEADDR, NULL, sizeof v));
    x->c->close(a);
}

static void option_v6only_after_bind(struct ctx *x) {
    int a = udp_socket(x, "socket");
    struct sockaddr_storage ss;
    socklen_t len = any_addr(x, AF_INET6, x->port[0], &ss);
    RC("bind [::]", x->c->bind(a, (void *)&ss, len));
    set_intopt(x, "IPV6_V6ONLY 1 after bind", a, IPPROTO_IPV6, IPV6_V6ONLY, 1);
    rec_intopt(x, "IPV6_V6ONLY", a, IPPROTO_IPV6, IPV6_V6ONLY);
    int b = udp_socket(x, "autobound socket");
    send_to(x, "sendto (autobinds)", b, "x", 1, 0);
    set_intopt(x, "IPV6_V6ONLY 1 after autobind", b, IPPROTO_IPV6, IPV6_V6ONLY, 1);
    wait_mask(x, "receiver mask", a, IO, POLLIN, 2000);
    int c = udp_socket(x, "socket c");
    set_intopt(x, "IP_TTL on an IPv6 socket", c, IPPROTO_IP, IP_TTL, 7);
    rec_intopt(x, "IP_TTL on an IPv6 socket get", c, IPPROTO_IP, IP_TTL);
    x->c->close(a);
    x->c->close(b);
    x->c->close(c);
}

static void options_on_connected(struct ctx *x) {
    int r = bound(x, "receiver", 0);
    int s = udp_socket(x, "socket");
    connect_to(x, "connect", s, 0);
    if (x->family == AF_INET) {
        set_intopt(x, "IP_TTL 33 on connected", s, IPPROTO_IP, IP_TTL, 33);
        rec_intopt(x, "IP_TTL", s, IPPROTO_IP, IP_TTL);
    } else {
        set_intopt(x, "IPV6_UNICAST_HOPS 33 on connected", s, IPPROTO_IPV6, IPV6_UNICAST_HOPS, 33);
        rec_intopt(x, "IPV6_UNICAST_HOPS", s, IPPROTO_IPV6, IPV6_UNICAST_HOPS);
    }
    RC("send", x->c->send(s, "ttl", 3, 0));
    wait_mask(x, "receiver mask", r, IO, POLLIN, 2000);
    recv_data(x, "recv", r, 8, MSG_DONTWAIT);
    rec_intopt(x, "SO_ERROR", s, SOL_SOCKET, SO_ERROR);
    rec_intopt(x, "SO_ACCEPTCONN", s, SOL_SOCKET, SO_ACCEPTCONN);
    RC("listen on UDP", x->c->listen(s, 4));
    RC("accept on UDP", x->c->accept(s, NULL, NULL));
    x->c->close(r);
    x->c->close(s);
}

/* ---------------- IPv6 and v4-mapped ---------------- */

static int v4_bound(struct ctx *x, const char *label, int i) {
    struct sockaddr_storage ss;
    int fd = FD(label, x->c->socket(AF_INET, SOCK_DGRAM, 0));
    socklen_t len = loopback(x, AF_INET, x->port[i], &ss);
    RC("bind 127.0.0.1", x->c->bind(fd, (void *)&ss, len));
    return fd;
}

static void v6_mapped_sendto(struct ctx *x) {
    int r = v4_bound(x, "v4 receiver", 0);
    int s = FD("v6 socket", x->c->socket(AF_INET6, SOCK_DGRAM, 0));
    rec_intopt(x, "IPV6_V6ONLY default", s, IPPROTO_IPV6, IPV6_V6ONLY);
    struct sockaddr_storage ss;
    socklen_t len = mapped_loopback(x->port[0], &ss);
    RC("sendto ::ffff:127.0.0.1", x->c->sendto(s, "mapped", 6, 0, (void *)&ss, len));
    rec_sockname(x, "v6 getsockname after", s);
    wait_mask(x, "v4 receiver mask", r, IO, POLLIN, 2000);
    struct sockaddr_storage from;
    socklen_t flen = sizeof from;
    memset(&from, 0, sizeof from);
    RC("v4 recvfrom", x->c->recvfrom(r, (char[8]){0}, 8, MSG_DONTWAIT, (void *)&from, &flen));
    rec_addr(x, "  from", (void *)&from, flen);
    RC("v4 replies to the source", x->c->sendto(r, "reply", 5, 0, (void *)&from, flen));
    wait_mask(x, "v6 mask", s, IO, POLLIN, 2000);
    recv_from(x, "v6 recvfrom", s, 8, 0);
    x->c->close(r);
    x->c->close(s);
}

static void v6_any_receives_v4(struct ctx *x) {
    int r = FD("v6 receiver", x->c->socket(AF_INET6, SOCK_DGRAM, 0));
    struct sockaddr_storage ss;
    socklen_t len = any_addr(x, AF_INET6, x->port[0], &ss);
    RC("bind [::]:P0", x->c->bind(r, (void *)&ss, len));
    int s = v4_bound(x, "v4 sender", 1);
    len = loopback(x, AF_INET, x->port[0], &ss);
    RC("v4 sendto 127.0.0.1:P0", x->c->sendto(s, "four", 4, 0, (void *)&ss, len));
    wait_mask(x, "v6 receiver mask", r, IO, POLLIN, 2000);
    struct sockaddr_storage from;
    socklen_t flen = sizeof from;
    memset(&from, 0, sizeof from);
    RC("v6 recvfrom", x->c->recvfrom(r, (char[8]){0}, 8, MSG_DONTWAIT, (void *)&from, &flen));
    rec_addr(x, "  from", (void *)&from, flen);
    RC("v6 replies to the mapped source", x->c->sendto(r, "six", 3, 0, (void *)&from, flen));
    wait_mask(x, "v4 mask", s, IO, POLLIN, 2000);
    recv_from(x, "v4 recvfrom", s, 8, 0);
    len = loopback(x, AF_INET6, x->port[0], &ss);
    int s6 = FD("v6 sender", x->c->socket(AF_INET6, SOCK_DGRAM, 0));
    RC("v6 sendto [::1]:P0", x->c->sendto(s6, "six", 3, 0, (void *)&ss, len));
    wait_mask(x, "v6 receiver mask again", r, IO, POLLIN, 2000);
    recv_from(x, "v6 recvfrom again", r, 8, 0);
    x->c->close(r);
    x->c->close(s);
    x->c->close(s6);
}

static void v6_only(struct ctx *x) {
    int r = FD("v6 receiver", x->c->socket(AF_INET6, SOCK_DGRAM, 0));
    set_intopt(x, "IPV6_V6ONLY 1", r, IPPROTO_IPV6, IPV6_V6ONLY, 1);
    struct sockaddr_storage ss;
    socklen_t len = any_addr(x, AF_INET6, x->port[0], &ss);
    RC("bind [::]:P0", x->c->bind(r, (void *)&ss, len));
    int s = FD("v4 sender", x->c->socket(AF_INET, SOCK_DGRAM, 0));
    len = loopback(x, AF_INET, x->port[0], &ss);
    RC("v4 sendto 127.0.0.1:P0", x->c->sendto(s, "four", 4, 0, (void *)&ss, len));
    poll_mask(x, "v6-only receiver gets nothing", r, IO, 200);
    len = mapped_loopback(x->port[1], &ss);
    RC("v6-only sendto ::ffff:127.0.0.1", x->c->sendto(r, "x", 1, 0, (void *)&ss, len));
    RC("v6-only connect ::ffff:127.0.0.1", x->c->connect(r, (void *)&ss, len));
    int v4 = FD("v4 socket on the same port", x->c->socket(AF_INET, SOCK_DGRAM, 0));
    len = any_addr(x, AF_INET, x->port[0], &ss);
    RC("bind 0.0.0.0:P0 beside the v6-only socket", x->c->bind(v4, (void *)&ss, len));
    int d = FD("dual-stack socket", x->c->socket(AF_INET6, SOCK_DGRAM, 0));
    len = any_addr(x, AF_INET6, x->port[0], &ss);
    RC("bind dual-stack [::]:P0 (both taken)", x->c->bind(d, (void *)&ss, len));
    x->c->close(r);
    x->c->close(s);
    x->c->close(v4);
    x->c->close(d);
}

static void v6_mapped_connect(struct ctx *x) {
    int r = v4_bound(x, "v4 receiver", 0);
    int s = FD("v6 socket", x->c->socket(AF_INET6, SOCK_DGRAM, 0));
    struct sockaddr_storage ss;
    socklen_t len = mapped_loopback(x->port[0], &ss);
    RC("connect ::ffff:127.0.0.1", x->c->connect(s, (void *)&ss, len));
    rec_sockname(x, "getsockname", s);
    rec_peername(x, "getpeername", s);
    RC("send", x->c->send(s, "map", 3, 0));
    wait_mask(x, "v4 receiver mask", r, IO, POLLIN, 2000);
    recv_from(x, "v4 recvfrom", r, 8, 0);
    len = mapped_loopback(x->port[1], &ss);
    RC("connect ::ffff:127.0.0.1 closed port", x->c->connect(s, (void *)&ss, len));
    RC("send", x->c->send(s, "x", 1, 0));
    wait_mask(x, "mask after the ICMP error", s, IO, POLLERR, 2000);
    rec_soerror(x, "SO_ERROR", s);
    x->c->close(r);
    x->c->close(s);
}

static void v6_sendto_sockaddr_in(struct ctx *x) {
    /* Linux lets a dual-stack IPv6 UDP socket send to a plain sockaddr_in. */
    int r = v4_bound(x, "v4 receiver", 0);
    int s = FD("v6 socket", x->c->socket(AF_INET6, SOCK_DGRAM, 0));
    struct sockaddr_storage ss;
    socklen_t len = loopback(x, AF_INET, x->port[0], &ss);
    RC("v6 sendto a sockaddr_in", x->c->sendto(s, "in4", 3, 0, (void *)&ss, len));
    wait_mask(x, "v4 receiver mask", r, IO, POLLIN, 2000);
    RC("v4 recv", x->c->recv(r, (char[8]){0}, 8, MSG_DONTWAIT));
    RC("v6 connect a sockaddr_in", x->c->connect(s, (void *)&ss, len));
    x->c->close(r);
    x->c->close(s);
}

static void v6_bind_mapped(struct ctx *x) {
    int r = FD("v6 socket", x->c->socket(AF_INET6, SOCK_DGRAM, 0));
    struct sockaddr_storage ss;
    socklen_t len = mapped_loopback(x->port[0], &ss);
    RC("bind ::ffff:127.0.0.1:P0", x->c->bind(r, (void *)&ss, len));
    rec_sockname(x, "getsockname", r);
    int s = FD("v4 sender", x->c->socket(AF_INET, SOCK_DGRAM, 0));
    len = loopback(x, AF_INET, x->port[0], &ss);
    RC("v4 sendto 127.0.0.1:P0", x->c->sendto(s, "m4", 2, 0, (void *)&ss, len));
    wait_mask(x, "receiver mask", r, IO, POLLIN, 2000);
    recv_from(x, "recvfrom", r, 8, 0);
    int s6 = FD("v6 sender", x->c->socket(AF_INET6, SOCK_DGRAM, 0));
    len = loopback(x, AF_INET6, x->port[0], &ss);
    RC("v6 sendto [::1]:P0 (nobody there)", x->c->sendto(s6, "x", 1, 0, (void *)&ss, len));
    poll_mask(x, "mapped receiver gets nothing", r, IO, 200);
    x->c->close(r);
    x->c->close(s);
    x->c->close(s6);
}

static void v6_rfc2133_length(struct ctx *x) {
    struct sockaddr_storage ss;
    int r = FD("v6 socket", x->c->socket(AF_INET6, SOCK_DGRAM, 0));
    loopback(x, AF_INET6, x->port[0], &ss);
    RC("bind with the 24-byte RFC 2133 length", x->c->bind(r, (void *)&ss, 24));
    rec_sockname(x, "getsockname", r);
    int s = FD("v6 sender", x->c->socket(AF_INET6, SOCK_DGRAM, 0));
    RC("sendto with 24 bytes", x->c->sendto(s, "24", 2, 0, (void *)&ss, 24));
    RC("sendto with 23 bytes", x->c->sendto(s, "23", 2, 0, (void *)&ss, 23));
    wait_mask(x, "receiver mask", r, IO, POLLIN, 2000);
    recv_from(x, "recvfrom", r, 8, 0);
    RC("connect with 24 bytes", x->c->connect(s, (void *)&ss, 24));
    RC("connect with 23 bytes", x->c->connect(s, (void *)&ss, 23));
    rec_peername(x, "getpeername", s);
    int t = FD("another", x->c->socket(AF_INET6, SOCK_DGRAM, 0));
    RC("bind with 23 bytes", x->c->bind(t, (void *)&ss, 23));
    x->c->close(r);
    x->c->close(s);
    x->c->close(t);
}

static void v6_names_and_scope(struct ctx *x) {
    int r = bound(x, "receiver", 0);
    struct sockaddr_in6 small;
    socklen_t len = 16;
    memset(&small, 0, sizeof small);
    RC("getsockname into 16 bytes", x->c->getsockname(r, (void *)&small, &len));
    rec_note("  length reported", "%u", (unsigned)len);
    struct sockaddr_storage ss;
    len = loopback(x, AF_INET6, x->port[0], &ss);
    ((struct sockaddr_in6 *)&ss)->sin6_flowinfo = htonl(0x12345);
    int s = FD("sender", x->c->socket(AF_INET6, SOCK_DGRAM, 0));
    RC("sendto with a flow label", x->c->sendto(s, "fl", 2, 0, (void *)&ss, len));
    wait_mask(x, "receiver mask", r, IO, POLLIN, 2000);
    recv_from(x, "recvfrom", r, 8, 0);
    x->c->close(r);
    x->c->close(s);
}

const struct scenario udp_scenarios[] = {
    {"udp_sendto_recvfrom", sendto_recvfrom, FAM_BOTH},
    {"udp_unbound_sender", unbound_sender, FAM_BOTH},
    {"udp_connected_send_recv", connected_send_recv, FAM_BOTH},
    {"udp_write_read", write_read, FAM_BOTH},
    {"udp_iovecs", iovecs, FAM_BOTH},
    {"udp_datagram_boundaries", datagram_boundaries, FAM_BOTH},
    {"udp_blocking_recv", blocking_recv, FAM_BOTH},
    {"udp_getsockname_after_connect", getsockname_after_connect, FAM_BOTH},
    {"udp_getsockname_any_then_connect", getsockname_any_then_connect, FAM_BOTH},
    {"udp_getsockname_after_sendto", getsockname_after_sendto, FAM_BOTH},
    {"udp_autobind_keeps_port", getsockname_after_send_then_recv, FAM_BOTH},
    {"udp_refused_so_error", refused_so_error, FAM_BOTH},
    {"udp_refused_recv", refused_recv, FAM_BOTH},
    {"udp_refused_blocking_recv", refused_blocking_recv, FAM_BOTH},
    {"udp_refused_send", refused_send, FAM_BOTH},
    {"udp_refused_then_reconnect", refused_then_reconnect, FAM_BOTH},
    {"udp_unconnected_no_error", unconnected_no_error, FAM_BOTH},
    {"udp_shut_wr", shut_wr, FAM_BOTH},
    {"udp_shut_rd", shut_rd, FAM_BOTH},
    {"udp_shut_rdwr", shut_rdwr, FAM_BOTH},
    {"udp_shutdown_unconnected", shutdown_unconnected, FAM_BOTH},
    {"udp_shutdown_unconnected_effects", shutdown_unconnected_effects, FAM_BOTH},
    {"udp_connect_unspec", connect_unspec, FAM_BOTH},
    {"udp_send_unconnected", send_unconnected, FAM_BOTH},
    {"udp_reconnect", reconnect, FAM_BOTH},
    {"udp_connected_filters", connected_filters, FAM_BOTH},
    {"udp_connect_keeps_queued", connect_keeps_queued, FAM_BOTH},
    {"udp_connected_sendto_other", connected_sendto_other, FAM_BOTH},
    {"udp_connect_bad_addresses", connect_bad_addresses, FAM_BOTH},
    {"udp_sendto_bad_addresses", sendto_bad_addresses, FAM_BOTH},
    {"udp_truncate_small_buffer", truncate_small_buffer, FAM_BOTH},
    {"udp_peek", peek, FAM_BOTH},
    {"udp_zero_length", zero_length, FAM_BOTH},
    {"udp_recv_len_zero", recv_len_zero, FAM_BOTH},
    {"udp_fionread", fionread_sizes, FAM_BOTH},
    {"udp_nonblocking", nonblocking, FAM_BOTH},
    {"udp_rcvtimeo", rcvtimeo, FAM_BOTH},
    {"udp_poll_masks", poll_masks, FAM_BOTH},
    {"udp_poll_error", poll_error_and_data, FAM_BOTH},
    {"udp_msgsize", msgsize, FAM_BOTH},
    {"udp_small_rcvbuf", small_rcvbuf, FAM_BOTH},
    {"udp_bind_rules", bind_rules, FAM_BOTH},
    {"udp_bind_in_use", bind_in_use, FAM_BOTH},
    {"udp_reuseaddr_share", reuseaddr_share, FAM_BOTH},
    {"udp_reuseport_share", reuseport_share, FAM_BOTH},
    {"udp_bind_any_receives", bind_any_receives, FAM_BOTH},
    {"udp_broadcast_refused", broadcast_refused, FAM_V4},
    {"udp_option_defaults", option_defaults, FAM_BOTH},
    {"udp_option_setting", option_setting, FAM_BOTH},
    {"udp_option_v6only_after_bind", option_v6only_after_bind, FAM_V6},
    {"udp_options_on_connected", options_on_connected, FAM_BOTH},
    {"udp_v6_mapped_sendto", v6_mapped_sendto, FAM_V6},
    {"udp_v6_any_receives_v4", v6_any_receives_v4, FAM_V6},
    {"udp_v6_only", v6_only, FAM_V6},
    {"udp_v6_mapped_connect", v6_mapped_connect, FAM_V6},
    {"udp_v6_sendto_sockaddr_in", v6_sendto_sockaddr_in, FAM_V6},
    {"udp_v6_bind_mapped", v6_bind_mapped, FAM_V6},
    {"udp_v6_rfc2133_length", v6_rfc2133_length, FAM_V6},
    {"udp_v6_names_and_scope", v6_names_and_scope, FAM_V6},
    {0, 0, 0},
};

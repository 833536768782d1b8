/*
 * udp_tcp_hello.c — a C program on the SocketClient library: one UDP round trip and one TCP
 * round trip through the socket server's stack, using poll(2) on the descriptors.
 *
 *   swift build --product SocketClientDynamic
 *   cc udp_tcp_hello.c -I../../include -L../../.build/debug -lSocketClientDynamic \
 *      -Wl,-rpath,$(realpath ../../.build/debug) -o udp_tcp_hello
 *   ./udp_tcp_hello [SOCKET_PATH]          # prints "udp ok" and "tcp ok"; exit 0 on success
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#include "socket_offload.h"

static int fail(const char *what) {
    fprintf(stderr, "%s: %s\n", what, strerror(errno));
    return 1;
}

static int wait_readable(int fd) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    return poll(&p, 1, 5000) == 1 && (p.revents & POLLIN);
}

int main(int argc, char **argv) {
    if (sko_configure(argc > 1 ? argv[1] : NULL, 0) != 0) return fail("sko_configure");
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof addr;

    /* UDP: a socket sends to itself. */
    int u = sko_socket(AF_INET, SOCK_DGRAM, 0);
    if (u < 0) return fail("socket(udp)");
    if (sko_bind(u, (struct sockaddr *)&addr, sizeof addr) != 0) return fail("bind(udp)");
    if (sko_getsockname(u, (struct sockaddr *)&addr, &len) != 0) return fail("getsockname");
    if (sko_sendto(u, "hello", 5, 0, (struct sockaddr *)&addr, sizeof addr) != 5) return fail("sendto");
    if (!wait_readable(u)) return fail("poll(udp)");
    char buf[64];
    ssize_t n = sko_recvfrom(u, buf, sizeof buf, 0, NULL, NULL);
    if (n != 5 || memcmp(buf, "hello", 5) != 0) return fail("recvfrom");
    puts("udp ok");

    /* TCP: listen, connect, accept, one round trip. */
    int l = sko_socket(AF_INET, SOCK_STREAM, 0);
    addr.sin_port = 0;
    if (l < 0 || sko_bind(l, (struct sockaddr *)&addr, sizeof addr) != 0 || sko_listen(l, 8) != 0) return fail("listen");
    len = sizeof addr;
    if (sko_getsockname(l, (struct sockaddr *)&addr, &len) != 0) return fail("getsockname(tcp)");
    int c = sko_socket(AF_INET, SOCK_STREAM, 0);
    if (c < 0 || sko_connect(c, (struct sockaddr *)&addr, sizeof addr) != 0) return fail("connect");
    int a = sko_accept(l, NULL, NULL);
    if (a < 0) return fail("accept");
    if (sko_write(c, "ping", 4) != 4) return fail("write");
    if (!wait_readable(a) || sko_read(a, buf, sizeof buf) != 4 || sko_write(a, "pong", 4) != 4) return fail("echo");
    if (!wait_readable(c) || sko_read(c, buf, sizeof buf) != 4 || memcmp(buf, "pong", 4) != 0) return fail("read");
    puts("tcp ok");
    sko_close(a);
    sko_close(c);
    sko_close(l);
    sko_close(u);
    return 0;
}

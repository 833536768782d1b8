/*
 * exec.c — sockets across exec, on whatever sockets the process gets (the kernel's, or the stack's
 * under the preload library, which the new program keeps through the environment):
 *
 *   exec PORT   makes a listener, a TCP connection (both ends, 6 bytes queued unread on one end,
 *               that end also dup'ed onto descriptor 40), a second connection whose one end is
 *               SOCK_CLOEXEC, and a connected non-blocking UDP pair; then execs itself as
 *   exec PORT --after L A B D C U V, which checks that everything not close-on-exec still works
 *               (the queued bytes arrive, both descriptors of the dup'ed socket, the listener
 *               accepts, the UDP socket is still connected and non-blocking) and that the
 *               close-on-exec end was closed in an orderly way (its peer reads EOF, not an error).
 * Exit 0 when every check holds; one line per check.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int failures;

static void check(const char *what, int ok, const char *detail) {
    printf("%s: %s%s%s\n", what, ok ? "ok" : "FAILED", detail[0] ? " " : "", detail);
    failures += !ok;
}

static struct sockaddr_in loopback(int port) {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((unsigned short)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return a;
}

static ssize_t recv_wait(int fd, char *buf, size_t n) {
    ssize_t r;
    do r = recv(fd, buf, n, 0); while (r < 0 && errno == EINTR);
    return r;
}

static int after(char **argv) {
    int l = atoi(argv[3]), a = atoi(argv[4]), b = atoi(argv[5]), d = atoi(argv[6]), c = atoi(argv[7]);
    int u = atoi(argv[8]), v = atoi(argv[9]);
    char buf[64] = {0}, detail[128];

    ssize_t n = recv_wait(b, buf, sizeof buf - 1);
    snprintf(detail, sizeof detail, "(%zd bytes \"%s\")", n, n > 0 ? buf : "");
    check("bytes queued before the exec arrive after it", n == 6 && !memcmp(buf, "queued", 6), detail);

    ssize_t s1 = send(b, "reply", 5, 0), s2 = send(d, "+dup", 4, 0);
    memset(buf, 0, sizeof buf);
    size_t got = 0;
    while (got < 9) { ssize_t r = recv_wait(a, buf + got, sizeof buf - 1 - got); if (r <= 0) break; got += (size_t)r; }
    snprintf(detail, sizeof detail, "(sent %zd+%zd, the peer read \"%s\")", s1, s2, buf);
    check("both descriptors of the dup'ed socket send", got == 9 && !strcmp(buf, "reply+dup"), detail);

    memset(buf, 0, sizeof buf);
    n = recv_wait(c, buf, sizeof buf);
    snprintf(detail, sizeof detail, "(recv %zd %s)", n, n < 0 ? strerror(errno) : "");
    check("the close-on-exec end was closed in order: its peer reads EOF", n == 0, detail);

    int on = 0;
    socklen_t len = sizeof on;
    int r = getsockopt(l, SOL_SOCKET, SO_ACCEPTCONN, &on, &len);
    struct sockaddr_in la;
    socklen_t lal = sizeof la;
    getsockname(l, (void *)&la, &lal);
    int x = socket(AF_INET, SOCK_STREAM, 0);
    int cr = connect(x, (void *)&la, sizeof la);
    int y = accept(l, NULL, NULL);
    snprintf(detail, sizeof detail, "(SO_ACCEPTCONN %d %d, connect %d, accept %d)", r, on, cr, y);
    check("the listener still listens and accepts", r == 0 && on == 1 && cr == 0 && y >= 0, detail);

    n = recv(u, buf, sizeof buf, 0);
    int again = n < 0 && errno == EAGAIN;
    int flags = fcntl(u, F_GETFL);
    ssize_t sent = send(u, "dgram", 5, 0);
    memset(buf, 0, sizeof buf);
    ssize_t rd = recv_wait(v, buf, sizeof buf - 1);
    snprintf(detail, sizeof detail, "(empty recv %s, O_NONBLOCK %d, send %zd, peer got \"%s\")", again ? "EAGAIN" : "not EAGAIN",
             flags >= 0 && (flags & O_NONBLOCK) != 0, sent, rd > 0 ? buf : "");
    check("the UDP socket is still connected and non-blocking", again && flags >= 0 && (flags & O_NONBLOCK) && sent == 5 && rd == 5, detail);

    close(a); close(b); close(d); close(l); close(x); close(y); close(u); close(v);
    return failures ? 1 : 0;
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    alarm(30); /* never outlive a test that gave up on us */
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc >= 10 && !strcmp(argv[2], "--after")) return after(argv);

    struct sockaddr_in addr = loopback(atoi(argv[1]));
    int l = socket(AF_INET, SOCK_STREAM, 0), on = 1;
    setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
    if (bind(l, (void *)&addr, sizeof addr) || listen(l, 8)) { perror("listen"); return 2; }
    int a = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(a, (void *)&addr, sizeof addr)) { perror("connect"); return 2; }
    int b = accept(l, NULL, NULL);
    if (send(a, "queued", 6, 0) != 6) { perror("send"); return 2; }
    int d = dup2(b, 40);
    int cx = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (connect(cx, (void *)&addr, sizeof addr)) { perror("connect"); return 2; }
    int c = accept(l, NULL, NULL);
    if (send(cx, "x", 1, 0) != 1 || recv_wait(c, (char[1]){0}, 1) != 1) { perror("cloexec pair"); return 2; }
    int u = socket(AF_INET, SOCK_DGRAM, 0), v = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in any = loopback(0), ua, va;
    socklen_t len = sizeof ua;
    bind(u, (void *)&any, sizeof any); bind(v, (void *)&any, sizeof any);
    getsockname(u, (void *)&ua, &len); len = sizeof va; getsockname(v, (void *)&va, &len);
    if (connect(u, (void *)&va, sizeof va) || connect(v, (void *)&ua, sizeof ua)) { perror("udp connect"); return 2; }
    fcntl(u, F_SETFL, fcntl(u, F_GETFL) | O_NONBLOCK);
    printf("before exec: listener %d, connection %d/%d (dup %d), close-on-exec %d/%d, udp %d/%d\n", l, a, b, d, cx, c, u, v);

    char s[9][16];
    int values[] = {l, a, b, d, c, u, v};
    for (int i = 0; i < 7; i++) snprintf(s[i], sizeof s[i], "%d", values[i]);
    execl("/proc/self/exe", argv[0], argv[1], "--after", s[0], s[1], s[2], s[3], s[4], s[5], s[6], (char *)NULL);
    perror("exec");
    return 2;
}

/*
 * conformance.c — the runner of the differential conformance suite (see conformance.h).
 *
 *   conformance --server PATH [--transport auto|process-vm|shared-memory] [--only SUBSTRING]
 *               [--jobs N] [--list] [--verbose]
 *
 * For every scenario (and family) it forks two children: one runs the scenario on the kernel's
 * sockets, the other on the stack of the server at PATH. Each child has an alarm (a hung call ends
 * it, and the record says where). The records are compared line by line; a differing line is
 * either documented (documented.c, with its reason) or a failure. Prints every difference and
 *   conformance: N scenarios, M calls, K differences, D documented
 * and exits 1 when a difference is not documented (or a child failed to run at all).
 */
#define _GNU_SOURCE
#include "conformance.h"
#include "../../include/socket_offload.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* ---- the two call tables ---- */

static int k_ioctl(int fd, unsigned long req, int *arg) { return ioctl(fd, req, arg); }
static int k_fcntl(int fd, int cmd, int arg) { return fcntl(fd, cmd, arg); }
static int k_poll(struct pollfd *fds, unsigned long n, int t) { return poll(fds, n, t); }

static const struct calls kernel_calls = {
    "kernel", socket, bind, connect, listen, accept, accept4, send, sendto, sendmsg, write, recv,
    recvfrom, recvmsg, read, getsockname, getpeername, getsockopt, setsockopt, k_ioctl, k_fcntl,
    shutdown, k_poll, close,
};

static int s_ioctl(int fd, unsigned long req, int *arg) { return sko_ioctl(fd, req, arg); }

static const struct calls stack_calls = {
    "stack", sko_socket, sko_bind, sko_connect, sko_listen, sko_accept, sko_accept4, sko_send,
    sko_sendto, sko_sendmsg, sko_write, sko_recv, sko_recvfrom, sko_recvmsg, sko_read,
    sko_getsockname, sko_getpeername, sko_getsockopt, sko_setsockopt, s_ioctl, sko_fcntl,
    sko_shutdown, sko_poll, sko_close,
};

/* ---- recording (in the child) ---- */

static int record_fd = -1;

static void emit(const char *label, const char *fmt, va_list ap) {
    char line[512];
    int n = snprintf(line, sizeof line, "%s: ", label);
    n += vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
    if (n > (int)sizeof line - 2) n = (int)sizeof line - 2;
    line[n++] = '\n';
    ssize_t w = write(record_fd, line, (size_t)n);
    (void)w;
}

void rec_note(const char *label, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    emit(label, fmt, ap);
    va_end(ap);
}

static const char *errname(int e) {
    const char *n = strerrorname_np(e);
    return n ? n : "E?";
}

long rec_rc(const char *label, long rc, int err) {
    if (rc < 0) rec_note(label, "%ld %s", rc, errname(err));
    else rec_note(label, "%ld", rc);
    errno = err;
    return rc;
}

long rec_fd(const char *label, long rc, int err) {
    if (rc < 0) rec_note(label, "%ld %s", rc, errname(err));
    else rec_note(label, "fd");
    errno = err;
    return rc;
}

static void port_name(struct ctx *x, unsigned short port, char *out, size_t size) {
    if (port == 0) { snprintf(out, size, "0"); return; }
    for (int i = 0; i < 8; i++)
        if (x->port[i] == port) { snprintf(out, size, "P%d", i); return; }
    snprintf(out, size, "ephemeral");
}

static void format_addr(struct ctx *x, const struct sockaddr *sa, socklen_t len, char *out, size_t size) {
    char host[INET6_ADDRSTRLEN], port[16];
    if (len < sizeof(sa_family_t)) { snprintf(out, size, "len=%u", (unsigned)len); return; }
    switch (sa->sa_family) {
    case AF_INET: {
        const struct sockaddr_in *in = (const void *)sa;
        inet_ntop(AF_INET, &in->sin_addr, host, sizeof host);
        port_name(x, ntohs(in->sin_port), port, sizeof port);
        snprintf(out, size, "len=%u inet %s:%s", (unsigned)len, host, port);
        break;
    }
    case AF_INET6: {
        const struct sockaddr_in6 *in6 = (const void *)sa;
        inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof host);
        port_name(x, ntohs(in6->sin6_port), port, sizeof port);
        snprintf(out, size, "len=%u inet6 [%s]:%s flow=%u scope=%u", (unsigned)len, host, port,
                 (unsigned)in6->sin6_flowinfo, (unsigned)in6->sin6_scope_id);
        break;
    }
    default: snprintf(out, size, "len=%u family=%d", (unsigned)len, sa->sa_family);
    }
}

void rec_addr(struct ctx *x, const char *label, const struct sockaddr *sa, socklen_t len) {
    char text[160];
    format_addr(x, sa, len, text, sizeof text);
    rec_note(label, "%s", text);
}

static void mask_text(int m, char *out, size_t size) {
    static const struct { int bit; const char *name; } names[] = {
        {POLLIN, "IN"}, {POLLPRI, "PRI"}, {POLLOUT, "OUT"}, {POLLERR, "ERR"}, {POLLHUP, "HUP"},
        {POLLNVAL, "NVAL"}, {POLLRDNORM, "RDNORM"}, {POLLRDBAND, "RDBAND"}, {POLLWRNORM, "WRNORM"},
        {POLLWRBAND, "WRBAND"}, {POLLRDHUP, "RDHUP"},
    };
    size_t n = 0;
    out[0] = 0;
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (m & names[i].bit) n += (size_t)snprintf(out + n, size - n, "%s%s", n ? "|" : "", names[i].name);
    if (n == 0) snprintf(out, size, "0");
}

static long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

void sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {}
}

int poll_mask(struct ctx *x, const char *label, int fd, short events, int timeout) {
    struct pollfd p = {fd, events, 0};
    errno = 0;
    int rc = x->c->poll(&p, 1, timeout);
    char m[96];
    mask_text(p.revents, m, sizeof m);
    if (rc < 0) rec_note(label, "-1 %s", errname(errno));
    else rec_note(label, "%d %s", rc, m);
    return rc < 0 ? -1 : p.revents;
}

int wait_mask(struct ctx *x, const char *label, int fd, short events, short want, int timeout) {
    long deadline = now_ms() + timeout;
    struct pollfd p;
    int rc;
    for (;;) {
        p = (struct pollfd){fd, events, 0};
        rc = x->c->poll(&p, 1, 20);
        if (rc < 0 || (p.revents & want) == want || now_ms() >= deadline) break;
        /* A mask without every wanted bit: look again after a moment (ours may lag the kernel's). */
        if (rc > 0) sleep_ms(5);
    }
    char m[96];
    mask_text(p.revents, m, sizeof m);
    if (rc < 0) rec_note(label, "-1 %s", errname(errno));
    else rec_note(label, "%s", m);
    return rc < 0 ? -1 : p.revents;
}

static socklen_t fill(int family, const void *addr, unsigned short port, struct sockaddr_storage *ss) {
    memset(ss, 0, sizeof *ss);
    if (family == AF_INET) {
        struct sockaddr_in *in = (void *)ss;
        in->sin_family = AF_INET;
        in->sin_port = htons(port);
        memcpy(&in->sin_addr, addr, 4);
        return sizeof *in;
    }
    struct sockaddr_in6 *in6 = (void *)ss;
    in6->sin6_family = AF_INET6;
    in6->sin6_port = htons(port);
    memcpy(&in6->sin6_addr, addr, 16);
    return sizeof *in6;
}

socklen_t loopback(struct ctx *x, int family, unsigned short port, struct sockaddr_storage *ss) {
    if (family == 0) family = x->family;
    struct in_addr v4 = {htonl(INADDR_LOOPBACK)};
    return family == AF_INET ? fill(AF_INET, &v4, port, ss) : fill(AF_INET6, &in6addr_loopback, port, ss);
}

socklen_t any_addr(struct ctx *x, int family, unsigned short port, struct sockaddr_storage *ss) {
    if (family == 0) family = x->family;
    struct in_addr v4 = {htonl(INADDR_ANY)};
    return family == AF_INET ? fill(AF_INET, &v4, port, ss) : fill(AF_INET6, &in6addr_any, port, ss);
}

socklen_t mapped_loopback(unsigned short port, struct sockaddr_storage *ss) {
    struct in6_addr a;
    inet_pton(AF_INET6, "::ffff:127.0.0.1", &a);
    return fill(AF_INET6, &a, port, ss);
}

void rec_sockname(struct ctx *x, const char *label, int fd) {
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    memset(&ss, 0, sizeof ss);
    errno = 0;
    if (x->c->getsockname(fd, (void *)&ss, &len) < 0) { rec_rc(label, -1, errno); return; }
    rec_addr(x, label, (void *)&ss, len);
}

void rec_peername(struct ctx *x, const char *label, int fd) {
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    memset(&ss, 0, sizeof ss);
    errno = 0;
    if (x->c->getpeername(fd, (void *)&ss, &len) < 0) { rec_rc(label, -1, errno); return; }
    rec_addr(x, label, (void *)&ss, len);
}

int rec_intopt(struct ctx *x, const char *label, int fd, int level, int name) {
    int v = -12345;
    socklen_t len = sizeof v;
    errno = 0;
    if (x->c->getsockopt(fd, level, name, &v, &len) < 0) { rec_rc(label, -1, errno); return -1; }
    rec_note(label, "0 value=%d len=%u", v, (unsigned)len);
    return v;
}

long set_intopt(struct ctx *x, const char *label, int fd, int level, int name, int value) {
    return RC(label, x->c->setsockopt(fd, level, name, &value, sizeof value));
}

void rec_common_options(struct ctx *x, int a) {
    rec_intopt(x, "SO_TYPE", a, SOL_SOCKET, SO_TYPE);
    rec_intopt(x, "SO_PROTOCOL", a, SOL_SOCKET, SO_PROTOCOL);
    rec_intopt(x, "SO_DOMAIN", a, SOL_SOCKET, SO_DOMAIN);
    rec_intopt(x, "SO_ACCEPTCONN", a, SOL_SOCKET, SO_ACCEPTCONN);
    rec_intopt(x, "SO_REUSEADDR", a, SOL_SOCKET, SO_REUSEADDR);
    rec_intopt(x, "SO_REUSEPORT", a, SOL_SOCKET, SO_REUSEPORT);
    rec_intopt(x, "SO_KEEPALIVE", a, SOL_SOCKET, SO_KEEPALIVE);
    rec_intopt(x, "SO_ERROR", a, SOL_SOCKET, SO_ERROR);
    if (x->family == AF_INET) {
        rec_intopt(x, "IP_TTL", a, IPPROTO_IP, IP_TTL);
        rec_intopt(x, "IP_TOS", a, IPPROTO_IP, IP_TOS);
    } else {
        rec_intopt(x, "IPV6_V6ONLY", a, IPPROTO_IPV6, IPV6_V6ONLY);
        rec_intopt(x, "IPV6_UNICAST_HOPS", a, IPPROTO_IPV6, IPV6_UNICAST_HOPS);
        rec_intopt(x, "IPV6_TCLASS", a, IPPROTO_IPV6, IPV6_TCLASS);
    }
}

int rec_soerror(struct ctx *x, const char *label, int fd) {
    int v = -12345;
    socklen_t len = sizeof v;
    errno = 0;
    if (x->c->getsockopt(fd, SOL_SOCKET, SO_ERROR, &v, &len) < 0) { rec_rc(label, -1, errno); return -1; }
    rec_note(label, "%s", v == 0 ? "0" : errname(v));
    return v;
}

int tcp_listener(struct ctx *x, int i, int backlog) {
    struct sockaddr_storage ss;
    int fd = FD("listener socket", x->c->socket(x->family, SOCK_STREAM, 0));
    /* As servers do: a port left in TIME_WAIT (by this scenario, or an earlier run) can be bound. */
    set_intopt(x, "listener SO_REUSEADDR", fd, SOL_SOCKET, SO_REUSEADDR, 1);
    socklen_t len = loopback(x, 0, x->port[i], &ss);
    RC("listener bind", x->c->bind(fd, (void *)&ss, len));
    RC("listener listen", x->c->listen(fd, backlog));
    return fd;
}

void tcp_pair(struct ctx *x, int *listener, int *client, int *server) {
    struct sockaddr_storage ss;
    *listener = tcp_listener(x, 0, 16);
    *client = FD("client socket", x->c->socket(x->family, SOCK_STREAM, 0));
    socklen_t len = loopback(x, 0, x->port[0], &ss);
    RC("client connect", x->c->connect(*client, (void *)&ss, len));
    *server = FD("accept", x->c->accept(*listener, NULL, NULL));
}

int udp_bound(struct ctx *x, int i) {
    struct sockaddr_storage ss;
    int fd = FD("udp socket", x->c->socket(x->family, SOCK_DGRAM, 0));
    socklen_t len = loopback(x, 0, x->port[i], &ss);
    RC("udp bind", x->c->bind(fd, (void *)&ss, len));
    return fd;
}

struct later_job { pthread_t thread; int ms; void (*fn)(void *); void *arg; };

static void *later_main(void *p) {
    struct later_job *j = p;
    sleep_ms(j->ms);
    j->fn(j->arg);
    return NULL;
}

void *later(int ms, void (*fn)(void *), void *arg) {
    struct later_job *j = calloc(1, sizeof *j);
    *j = (struct later_job){0, ms, fn, arg};
    pthread_create(&j->thread, NULL, later_main, j);
    return j;
}

void join_later(void *handle) {
    struct later_job *j = handle;
    pthread_join(j->thread, NULL);
    free(j);
}

long read_all(struct ctx *x, const char *label, int fd, char *buf, long want, int timeout) {
    long got = 0, deadline = now_ms() + timeout;
    int last_err = 0;
    long last = 0;
    while (got < want && now_ms() < deadline) {
        struct pollfd p = {fd, POLLIN, 0};
        if (x->c->poll(&p, 1, 50) <= 0) continue;
        errno = 0;
        last = x->c->recv(fd, buf + got, (size_t)(want - got), MSG_DONTWAIT);
        if (last < 0 && errno == EAGAIN) continue;
        if (last <= 0) { last_err = errno; break; }
        got += last;
    }
    if (last < 0) rec_note(label, "%ld then -1 %s", got, errname(last_err));
    else rec_note(label, "%ld%s", got, last == 0 && got < want ? " then EOF" : "");
    return got;
}

/* ---- the runner (in the parent) ---- */

struct run {
    pid_t pid;
    int out;         /* memfd holding the record */
    long started;
    int status;
    int done;
};

struct job {
    const struct scenario *s;
    int index;  /* in the table of every scenario and family (the order --list prints) */
    int family;
    char name[96];
    struct run run[2]; /* kernel, stack */
};

static const char *server_path;
static int transport;
static int child_timeout_s = 20;
/* --preload LIB: the stack's side runs libc's calls in a program started with LD_PRELOAD=LIB
 * (the preload library's path to the stack) instead of sko_* calls. */
static const char *preload_library;

/* Runs one scenario in this process and exits: the child side of every run. */
static void run_scenario(const struct job *j, int which, unsigned short base, int fd) {
    record_fd = fd;
    signal(SIGPIPE, SIG_IGN);
    alarm((unsigned)child_timeout_s);
    struct ctx x = {.c = which == 0 || preload_library ? &kernel_calls : &stack_calls, .family = j->family};
    for (int i = 0; i < 8; i++) x.port[i] = (unsigned short)(base + i);
    if (which == 1 && !preload_library && sko_configure(server_path, transport) < 0) {
        rec_note("configure", "-1 %s", errname(errno));
        _exit(3);
    }
    j->s->fn(&x);
    rec_note("end", "ok");
    _exit(0);
}

static void run_child(struct job *j, int which, unsigned short base) {
    struct run *r = &j->run[which];
    r->out = memfd_create("record", MFD_CLOEXEC);
    if (r->out < 0) { perror("memfd_create"); exit(2); }
    r->started = now_ms();
    r->done = 0;
    pid_t pid = fork();
    if (pid < 0) { perror("fork"); exit(2); }
    if (pid == 0) {
        if (which == 1 && preload_library) {
            /* A new program, so that the loader preloads the library into it. */
            char index[16], family[16], port[16], fd[16], timeout[16];
            snprintf(index, sizeof index, "%d", j->index);
            snprintf(family, sizeof family, "%d", j->family);
            snprintf(port, sizeof port, "%u", base);
            snprintf(fd, sizeof fd, "%d", r->out);
            snprintf(timeout, sizeof timeout, "%d", child_timeout_s);
            fcntl(r->out, F_SETFD, 0);
            setenv("LD_PRELOAD", preload_library, 1);
            setenv("SOCKET_SERVER_PATH", server_path, 1);
            char *argv[] = {"conformance", "--run-one", index, family, port, fd, timeout, NULL};
            execv("/proc/self/exe", argv);
            _exit(4);
        }
        run_scenario(j, which, base, r->out);
    }
    r->pid = pid;
}

static char *slurp(int fd) {
    off_t size = lseek(fd, 0, SEEK_END);
    char *text = calloc(1, (size_t)size + 1);
    if (size > 0 && pread(fd, text, (size_t)size, 0) != size) text[0] = 0;
    close(fd);
    return text;
}

static size_t split(char *text, char ***lines) {
    size_t n = 0, cap = 16;
    *lines = malloc(cap * sizeof **lines);
    for (char *p = text; *p;) {
        char *e = strchr(p, '\n');
        if (e) *e = 0;
        if (n == cap) *lines = realloc(*lines, (cap *= 2) * sizeof **lines);
        (*lines)[n++] = p;
        if (!e) break;
        p = e + 1;
    }
    return n;
}

static const char *documented_reason(const char *scenario, const char *line) {
    for (const struct documented *d = documented_differences; d->scenario; d++) {
        if (fnmatch(d->scenario, scenario, 0) != 0) continue;
        if (d->label == NULL) return d->reason;
        char label[256];
        const char *colon = strstr(line, ": ");
        size_t n = colon ? (size_t)(colon - line) : strlen(line);
        if (n >= sizeof label) continue;
        memcpy(label, line, n);
        label[n] = 0;
        if (fnmatch(d->label, label, 0) == 0) return d->reason;
    }
    return NULL;
}

static void status_note(int status, char *out, size_t size) {
    if (WIFEXITED(status)) snprintf(out, size, "exit %d", WEXITSTATUS(status));
    else if (WIFSIGNALED(status) && WTERMSIG(status) == SIGALRM) snprintf(out, size, "TIMEOUT (a call hung)");
    else if (WIFSIGNALED(status)) snprintf(out, size, "killed by signal %d", WTERMSIG(status));
    else snprintf(out, size, "status %d", status);
}

static long total_calls, total_diffs, total_documented, total_broken;
static int verbose;

static void compare(struct job *j) {
    char *text[2];
    char **lines[2];
    size_t n[2];
    for (int w = 0; w < 2; w++) {
        text[w] = slurp(j->run[w].out);
        n[w] = split(text[w], &lines[w]);
    }
    char st[2][64];
    for (int w = 0; w < 2; w++) status_note(j->run[w].status, st[w], sizeof st[w]);
    if (!(WIFEXITED(j->run[0].status) && WEXITSTATUS(j->run[0].status) == 0)) {
        printf("BROKEN %s: the kernel run ended with %s (the scenario itself is wrong)\n", j->name, st[0]);
        total_broken++;
    }
    total_calls += (long)n[0];
    size_t max = n[0] > n[1] ? n[0] : n[1];
    int diffs = 0;
    for (size_t i = 0; i < max; i++) {
        const char *k = i < n[0] ? lines[0][i] : "(nothing)";
        const char *s = i < n[1] ? lines[1][i] : st[1];
        if (strcmp(k, s) == 0) {
            if (verbose) printf("  same %s #%zu %s\n", j->name, i, k);
            continue;
        }
        const char *reason = documented_reason(j->name, i < n[0] ? k : s);
        total_diffs++;
        diffs++;
        if (reason) {
            total_documented++;
            printf("documented %s #%zu\n    kernel: %s\n    stack:  %s\n    why: %s\n", j->name, i, k, s, reason);
        } else {
            printf("DIFFERENCE %s #%zu\n    kernel: %s\n    stack:  %s\n", j->name, i, k, s);
        }
        /* Once the two runs have taken different paths, later lines say nothing more. */
        if (strncmp(k, "end:", 4) == 0 || i >= n[1] || i >= n[0]) break;
    }
    if (verbose && diffs == 0) printf("same %s (%zu calls)\n", j->name, n[0]);
    for (int w = 0; w < 2; w++) { free(lines[w]); free(text[w]); }
}

static void usage(void) {
    fprintf(stderr, "usage: conformance --server PATH [--transport auto|process-vm|shared-memory] "
                    "[--only PATTERN] [--jobs N] [--port-base N] [--preload LIBRARY] [--list] [--verbose]\n");
    exit(2);
}

int main(int argc, char **argv) {
    const char *only = NULL;
    int jobs = 4, list = 0;
    int run_index = -1, run_family = 0, run_fd = -1;
    unsigned run_base = 0;
    unsigned port_base = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--server") && i + 1 < argc) server_path = argv[++i];
        else if (!strcmp(argv[i], "--transport") && i + 1 < argc) {
            const char *t = argv[++i];
            transport = !strcmp(t, "auto") ? 0 : !strcmp(t, "process-vm") ? 1 : !strcmp(t, "shared-memory") ? 2 : -1;
            if (transport < 0) usage();
        } else if (!strcmp(argv[i], "--only") && i + 1 < argc) only = argv[++i];
        else if (!strcmp(argv[i], "--jobs") && i + 1 < argc) jobs = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--port-base") && i + 1 < argc) port_base = (unsigned)atoi(argv[++i]);
        else if (!strcmp(argv[i], "--timeout") && i + 1 < argc) child_timeout_s = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--list")) list = 1;
        else if (!strcmp(argv[i], "--preload") && i + 1 < argc) preload_library = argv[++i];
        else if (!strcmp(argv[i], "--run-one") && i + 5 < argc) {
            run_index = atoi(argv[i + 1]);
            run_family = atoi(argv[i + 2]);
            run_base = (unsigned)atoi(argv[i + 3]);
            run_fd = atoi(argv[i + 4]);
            child_timeout_s = atoi(argv[i + 5]);
            i += 5;
        }
        else if (!strcmp(argv[i], "--verbose")) verbose = 1;
        else usage();
    }
    if (!server_path && !list && run_index < 0) usage();
    if (jobs < 1) jobs = 1;
    setvbuf(stdout, NULL, _IOLBF, 0);

    /* Every scenario once per family it runs in. */
    const struct scenario *tables[] = {tcp_scenarios, udp_scenarios, misc_scenarios, preload_scenarios};
    size_t count = 0, cap = 64;
    int index = 0;
    struct job *all = calloc(cap, sizeof *all);
    for (size_t t = 0; t < 4; t++)
        for (const struct scenario *s = tables[t]; s->name; s++)
            for (int f = 0; f < 2; f++) {
                if (!(s->families & (f == 0 ? FAM_V4 : FAM_V6))) continue;
                if ((s->families & PRELOAD_ONLY) && !preload_library && run_index < 0) continue;
                if (count == cap) all = realloc(all, (cap *= 2) * sizeof *all);
                struct job *j = &all[count];
                memset(j, 0, sizeof *j);
                j->s = s;
                j->index = index++;
                j->family = f == 0 ? AF_INET : AF_INET6;
                snprintf(j->name, sizeof j->name, "%s/%s", s->name, f == 0 ? "v4" : "v6");
                if (only && !strstr(j->name, only)) continue;
                count++;
            }
    if (run_index >= 0) {
        /* The preloaded side of one run (see run_child). */
        for (size_t i = 0; i < count; i++)
            if (all[i].index == run_index && all[i].family == run_family) {
                preload_library = "(this process)";
                run_scenario(&all[i], 1, (unsigned short)run_base, run_fd);
            }
        return 5;
    }
    if (list) {
        for (size_t i = 0; i < count; i++) printf("%s\n", all[i].name);
        return 0;
    }
    /* Ports: 8 per scenario from a base below the kernel's ephemeral range (32768-60999). Runs
     * within a minute of each other should get different bases (--port-base): ports of the
     * kernel's connections stay in TIME_WAIT for 60 s. */
    if (port_base == 0) port_base = 10000 + (unsigned)((time(NULL) / 60) % 8) * 2000;
    if (port_base + count * 8 > 32700) port_base = 10000;

    long t0 = now_ms();
    size_t next = 0, finished = 0;
    int running = 0;
    while (finished < count) {
        while (running < jobs && next < count) {
            struct job *j = &all[next];
            for (int w = 0; w < 2; w++) run_child(j, w, (unsigned short)(port_base + next * 8));
            running++;
            next++;
        }
        int status;
        pid_t pid = waitpid(-1, &status, 0);
        if (pid < 0) { perror("waitpid"); return 2; }
        for (size_t i = 0; i < next; i++) {
            struct job *j = &all[i];
            for (int w = 0; w < 2; w++)
                if (j->run[w].pid == pid && !j->run[w].done) {
                    j->run[w].done = 1;
                    j->run[w].status = status;
                    if (j->run[0].done && j->run[1].done) {
                        compare(j);
                        finished++;
                        running--;
                    }
                }
        }
    }
    long undocumented = total_diffs - total_documented;
    printf("conformance: %zu scenarios, %ld calls, %ld differences, %ld documented (%.1f s)\n",
           count, total_calls, total_diffs, total_documented, (now_ms() - t0) / 1000.0);
    if (total_broken) printf("conformance: %ld scenarios broken on the kernel\n", total_broken);
    if (undocumented) printf("conformance: %ld undocumented differences\n", undocumented);
    return undocumented || total_broken ? 1 : 0;
}

/*
 * conformance.h — the differential conformance suite: every scenario is written once against a
 * table of socket calls and run twice, once on the kernel's sockets (libc) and once on the stack
 * (SocketClient's sko_* calls), each run in its own child process. Every call's result (return
 * value, errno, lengths, addresses, poll masks) is recorded as one line; the runner compares the
 * two records line by line. See conformance.c for the runner and documented.c for the deliberate
 * differences.
 */
#ifndef CONFORMANCE_H
#define CONFORMANCE_H

#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/types.h>

/* One set of socket calls, shaped like libc's. */
struct calls {
    const char *name;
    int (*socket)(int, int, int);
    int (*bind)(int, const struct sockaddr *, socklen_t);
    int (*connect)(int, const struct sockaddr *, socklen_t);
    int (*listen)(int, int);
    int (*accept)(int, struct sockaddr *, socklen_t *);
    int (*accept4)(int, struct sockaddr *, socklen_t *, int);
    ssize_t (*send)(int, const void *, size_t, int);
    ssize_t (*sendto)(int, const void *, size_t, int, const struct sockaddr *, socklen_t);
    ssize_t (*sendmsg)(int, const struct msghdr *, int);
    ssize_t (*write)(int, const void *, size_t);
    ssize_t (*recv)(int, void *, size_t, int);
    ssize_t (*recvfrom)(int, void *, size_t, int, struct sockaddr *, socklen_t *);
    ssize_t (*recvmsg)(int, struct msghdr *, int);
    ssize_t (*read)(int, void *, size_t);
    int (*getsockname)(int, struct sockaddr *, socklen_t *);
    int (*getpeername)(int, struct sockaddr *, socklen_t *);
    int (*getsockopt)(int, int, int, void *, socklen_t *);
    int (*setsockopt)(int, int, int, const void *, socklen_t);
    int (*ioctl)(int, unsigned long, int *);
    int (*fcntl)(int, int, int);
    int (*shutdown)(int, int);
    int (*poll)(struct pollfd *, unsigned long, int);
    int (*close)(int);
};

/* What a scenario runs with. */
struct ctx {
    const struct calls *c;
    int family;            /* AF_INET or AF_INET6: the family a two-family scenario runs in */
    unsigned short port[8]; /* ports reserved for this scenario (same numbers on both sides) */
};

typedef void (*scenario_fn)(struct ctx *);

struct scenario {
    const char *name;
    scenario_fn fn;
    int families;          /* FAM_V4, FAM_V6 or both: one scenario per family */
};
#define FAM_V4 1
#define FAM_V6 2
#define FAM_BOTH 3
#define PRELOAD_ONLY 4 /* runs only with --preload (select, epoll, dup: calls only libc has) */

/* The scenario tables (one per file), each ended by a {0} entry. */
extern const struct scenario tcp_scenarios[];
extern const struct scenario udp_scenarios[];
extern const struct scenario misc_scenarios[];
extern const struct scenario preload_scenarios[];

/* A difference the suite accepts, with its reason (documented.c). `scenario` and `label` are
 * fnmatch(3) patterns ("tcp_x/v*" covers both families); `label` NULL covers every call of the
 * scenario. */
struct documented {
    const char *scenario;
    const char *label;
    const char *reason;
};
extern const struct documented documented_differences[];

/* ---- recording (each call appends one line "label: result" to the run's record) ---- */

/* Records the result of a call returning a count or 0/-1 and returns it (errno preserved). */
long rec_rc(const char *label, long rc, int err);
/* Records a call returning a descriptor: "fd" or the errno. */
long rec_fd(const char *label, long rc, int err);
/* Records a free-form note (e.g. bytes compared). */
void rec_note(const char *label, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Records an address as the kernel would print it, with this scenario's ports named. */
void rec_addr(struct ctx *x, const char *label, const struct sockaddr *sa, socklen_t len);

#define RC(label, expr) ({ errno = 0; long r_ = (long)(expr); rec_rc(label, r_, errno); })
#define FD(label, expr) ({ errno = 0; long r_ = (long)(expr); (int)rec_fd(label, r_, errno); })

/* ---- helpers (recorded) ---- */

/* Loopback address of the scenario's family (or of `family`), port `port` (host order). */
socklen_t loopback(struct ctx *x, int family, unsigned short port, struct sockaddr_storage *ss);
socklen_t any_addr(struct ctx *x, int family, unsigned short port, struct sockaddr_storage *ss);
/* ::ffff:127.0.0.1 */
socklen_t mapped_loopback(unsigned short port, struct sockaddr_storage *ss);

/* poll once with `timeout` ms and record "rc revents". Returns revents. */
int poll_mask(struct ctx *x, const char *label, int fd, short events, int timeout);
/* poll until every bit of `want` is set (or `timeout` ms passed) and record the final mask. */
int wait_mask(struct ctx *x, const char *label, int fd, short events, short want, int timeout);

/* getsockname/getpeername, recorded with the address. */
void rec_sockname(struct ctx *x, const char *label, int fd);
void rec_peername(struct ctx *x, const char *label, int fd);
/* getsockopt of an int option, recorded as "rc value". */
int rec_intopt(struct ctx *x, const char *label, int fd, int level, int name);
/* setsockopt of an int option. */
long set_intopt(struct ctx *x, const char *label, int fd, int level, int name, int value);
/* The defaults every socket answers: SOL_SOCKET's common options, then the family's TTL/TOS or
 * V6ONLY/hop limit/traffic class. */
void rec_common_options(struct ctx *x, int fd);
/* SO_ERROR, recorded. */
int rec_soerror(struct ctx *x, const char *label, int fd);

/* A listening TCP socket on loopback port x->port[i]; a connected client and the accepted server. */
int tcp_listener(struct ctx *x, int i, int backlog);
void tcp_pair(struct ctx *x, int *listener, int *client, int *server);
/* A UDP socket bound to loopback port x->port[i]. */
int udp_bound(struct ctx *x, int i);

/* Runs fn(arg) on a new thread after `ms` milliseconds; join with join_later. */
void *later(int ms, void (*fn)(void *), void *arg);
void join_later(void *handle);
void sleep_ms(int ms);

/* Reads from fd until `want` bytes or EOF/error or timeout (nonblocking-safe); records the total. */
long read_all(struct ctx *x, const char *label, int fd, char *buf, long want, int timeout);

#endif

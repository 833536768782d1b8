/*
 * preload.c — libsocket-offload-preload.so: unmodified programs on the stack (LD_PRELOAD).
 *
 * The library interposes libc's socket calls. AF_INET/AF_INET6 stream and datagram sockets go to the
 * stack through SocketClient's sko_* calls (libSocketClientDynamic.so, loaded from the directory
 * this library is in the first time a program makes such a socket); every other descriptor goes to
 * libc untouched, for the price of one array lookup.
 *
 * Which descriptors are ours: a table indexed by descriptor (one byte per descriptor, set and read
 * with relaxed atomics: a descriptor number is ours exactly while our socket holds it open in the
 * kernel, so no other thread can be handed that number meanwhile). A stack socket's descriptor is
 * its eventfd (see socket_offload.h); `dup` gives an alias (a kernel dup of the eventfd) that stands
 * for the same socket, which closes when its last descriptor does.
 *
 * Calls made by SocketClient itself (it uses read, write, poll and close on its own descriptors,
 * including the eventfds the application holds) must reach libc: they are recognised by the
 * caller's address (inside libSocketClientDynamic.so) or by a per-thread depth counter set while
 * this library is inside an sko_* call.
 */
#include "socket_offload_preload.h"

#include <alloca.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <link.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/select.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

/* ---------------------------------------------------------------- libc, resolved once */

#define REAL_FUNCTIONS(X) \
    X(socket, int, (int, int, int)) \
    X(bind, int, (int, const struct sockaddr *, socklen_t)) \
    X(listen, int, (int, int)) \
    X(accept, int, (int, struct sockaddr *, socklen_t *)) \
    X(accept4, int, (int, struct sockaddr *, socklen_t *, int)) \
    X(connect, int, (int, const struct sockaddr *, socklen_t)) \
    X(send, ssize_t, (int, const void *, size_t, int)) \
    X(sendto, ssize_t, (int, const void *, size_t, int, const struct sockaddr *, socklen_t)) \
    X(sendmsg, ssize_t, (int, const struct msghdr *, int)) \
    X(sendmmsg, int, (int, struct mmsghdr *, unsigned int, int)) \
    X(recv, ssize_t, (int, void *, size_t, int)) \
    X(recvfrom, ssize_t, (int, void *, size_t, int, struct sockaddr *, socklen_t *)) \
    X(recvmsg, ssize_t, (int, struct msghdr *, int)) \
    X(recvmmsg, int, (int, struct mmsghdr *, unsigned int, int, struct timespec *)) \
    X(read, ssize_t, (int, void *, size_t)) \
    X(write, ssize_t, (int, const void *, size_t)) \
    X(readv, ssize_t, (int, const struct iovec *, int)) \
    X(writev, ssize_t, (int, const struct iovec *, int)) \
    X(close, int, (int)) \
    X(shutdown, int, (int, int)) \
    X(getsockopt, int, (int, int, int, void *, socklen_t *)) \
    X(setsockopt, int, (int, int, int, const void *, socklen_t)) \
    X(getsockname, int, (int, struct sockaddr *, socklen_t *)) \
    X(getpeername, int, (int, struct sockaddr *, socklen_t *)) \
    X(fcntl, int, (int, int, ...)) \
    X(ioctl, int, (int, unsigned long, ...)) \
    X(dup, int, (int)) \
    X(dup2, int, (int, int)) \
    X(dup3, int, (int, int, int)) \
    X(poll, int, (struct pollfd *, nfds_t, int)) \
    X(ppoll, int, (struct pollfd *, nfds_t, const struct timespec *, const sigset_t *)) \
    X(select, int, (int, fd_set *, fd_set *, fd_set *, struct timeval *)) \
    X(pselect, int, (int, fd_set *, fd_set *, fd_set *, const struct timespec *, const sigset_t *)) \
    X(epoll_ctl, int, (int, int, int, struct epoll_event *)) \
    X(epoll_wait, int, (int, struct epoll_event *, int, int)) \
    X(epoll_pwait, int, (int, struct epoll_event *, int, int, const sigset_t *)) \
    X(sendfile, ssize_t, (int, int, off_t *, size_t))

#define DECLARE(name, ret, args) static ret(*real_##name) args;
REAL_FUNCTIONS(DECLARE)

/* Resolves libc's function on first use (a call may arrive before our constructor runs). */
#define REAL(name) (real_##name ? real_##name : (real_##name = dlsym(RTLD_NEXT, #name)))

/* ---------------------------------------------------------------- the client library */

#define SKO_FUNCTIONS(X) \
    X(sko_socket, int, (int, int, int)) \
    X(sko_bind, int, (int, const struct sockaddr *, socklen_t)) \
    X(sko_connect, int, (int, const struct sockaddr *, socklen_t)) \
    X(sko_listen, int, (int, int)) \
    X(sko_accept4, int, (int, struct sockaddr *, socklen_t *, int)) \
    X(sko_sendto, ssize_t, (int, const void *, size_t, int, const struct sockaddr *, socklen_t)) \
    X(sko_sendmsg, ssize_t, (int, const struct msghdr *, int)) \
    X(sko_recvfrom, ssize_t, (int, void *, size_t, int, struct sockaddr *, socklen_t *)) \
    X(sko_recvmsg, ssize_t, (int, struct msghdr *, int)) \
    X(sko_getsockname, int, (int, struct sockaddr *, socklen_t *)) \
    X(sko_getpeername, int, (int, struct sockaddr *, socklen_t *)) \
    X(sko_getsockopt, int, (int, int, int, void *, socklen_t *)) \
    X(sko_setsockopt, int, (int, int, int, const void *, socklen_t)) \
    X(sko_ioctl, int, (int, unsigned long, int *)) \
    X(sko_fcntl, int, (int, int, int)) \
    X(sko_shutdown, int, (int, int)) \
    X(sko_poll, int, (struct pollfd *, unsigned long, int)) \
    X(sko_ppoll, int, (struct pollfd *, unsigned long, int, const sigset_t *)) \
    X(sko_close, int, (int)) \
    X(sko_server_path, size_t, (char *, size_t)) \
    X(sko_before_fork, int, (void)) \
    X(sko_after_fork_in_parent, void, (pid_t)) \
    X(sko_after_fork_in_child, void, (void)) \
    X(sko_before_exec, size_t, (const int *, const int *, size_t, char *, size_t)) \
    X(sko_after_failed_exec, void, (void)) \
    X(sko_adopt_after_exec, void, (int, uint32_t, int, int))

#define DECLARE_SKO(name, ret, args) static ret(*name##_p) args;
SKO_FUNCTIONS(DECLARE_SKO)

static uintptr_t client_lo, client_hi; /* libSocketClientDynamic.so's mapped range */
static int client_error;               /* errno of a failed load (then every stack socket fails) */
static pthread_once_t client_once = PTHREAD_ONCE_INIT;
static __thread int depth;             /* > 0 while this thread is inside an sko_* call */


static int find_range(struct dl_phdr_info *info, size_t size, void *data) {
    (void)size;
    uintptr_t want = (uintptr_t)data;
    uintptr_t lo = UINTPTR_MAX, hi = 0;
    for (int i = 0; i < info->dlpi_phnum; i++) {
        if (info->dlpi_phdr[i].p_type != PT_LOAD) continue;
        uintptr_t a = info->dlpi_addr + info->dlpi_phdr[i].p_vaddr;
        if (a < lo) lo = a;
        if (a + info->dlpi_phdr[i].p_memsz > hi) hi = a + info->dlpi_phdr[i].p_memsz;
    }
    if (want >= lo && want < hi) {
        client_lo = lo;
        client_hi = hi;
        return 1;
    }
    return 0;
}

static void load_client(void) {
    char path[PATH_MAX];
    const char *env = getenv("SOCKET_OFFLOAD_CLIENT_LIBRARY");
    if (env && *env) {
        snprintf(path, sizeof path, "%s", env);
    } else {
        Dl_info self;
        if (!dladdr((void *)load_client, &self) || !self.dli_fname) { client_error = ELIBACC; return; }
        snprintf(path, sizeof path, "%s", self.dli_fname);
        char *slash = strrchr(path, '/');
        size_t dir = slash ? (size_t)(slash - path + 1) : 0;
        snprintf(path + dir, sizeof path - dir, "libSocketClientDynamic.so");
    }
    depth++;
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    depth--;
    if (!h) {
        fprintf(stderr, "socket-offload: cannot load %s: %s\n", path, dlerror());
        client_error = ELIBACC;
        return;
    }
#define LOAD_SKO(name, ret, args) \
    if (!(name##_p = (ret(*) args)dlsym(h, #name))) { client_error = ELIBBAD; return; }
    SKO_FUNCTIONS(LOAD_SKO)
    dl_iterate_phdr(find_range, (void *)sko_socket_p);
}

static int client_ready(void) {
    pthread_once(&client_once, load_client);
    if (client_error) { errno = client_error; return 0; }
    return 1;
}

/* Whether a call comes from SocketClient itself (or from us, inside an sko_* call): libc's then. */
static inline int from_library(void *caller) {
    return depth > 0 || ((uintptr_t)caller >= client_lo && (uintptr_t)caller < client_hi);
}

/* Calls an sko_* function with the depth counter held, keeping its errno. */
#define SKO(name, ...) ({ depth++; __typeof__(name##_p(__VA_ARGS__)) r_ = name##_p(__VA_ARGS__); int e_ = errno; depth--; errno = e_; r_; })
/* The same for the functions that return nothing. */
#define SKO_VOID(name, ...) do { depth++; name##_p(__VA_ARGS__); int e_ = errno; depth--; errno = e_; } while (0)

/* ---------------------------------------------------------------- the descriptor table */

enum {
    NOT_OURS = 0,
    SOCKET = 1,
    ALIAS = 2,
    EPOLL_SET = 3, /* an epoll instance watching ours */
};
static _Atomic uint8_t *kinds;   /* per descriptor */
static int *targets;             /* per descriptor: the socket's own descriptor (for an alias) */
static _Atomic int *references;  /* per socket descriptor: how many descriptors stand for it */
/* Per socket descriptor: a call found it empty (1) or full (2), i.e. EAGAIN: for EPOLLET, the next
 * data (room) is a new edge even if the socket looked readable (writable) at the last look. */
static _Atomic uint8_t *drained;
static int table_size;
static pthread_mutex_t table_lock = PTHREAD_MUTEX_INITIALIZER;

static void table_init(void) {
    if (kinds) return;
    struct rlimit rl;
    int n = 1 << 16;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_max != RLIM_INFINITY && rl.rlim_max > (rlim_t)n) n = (int)rl.rlim_max;
    if (n > (1 << 20)) n = 1 << 20;
    void *a = mmap(NULL, (size_t)n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    void *b = mmap(NULL, (size_t)n * sizeof(int), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    void *c = mmap(NULL, (size_t)n * sizeof(int), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    void *d = mmap(NULL, (size_t)n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (a == MAP_FAILED || b == MAP_FAILED || c == MAP_FAILED || d == MAP_FAILED) return;
    drained = d;
    targets = b;
    references = c;
    table_size = n;
    atomic_thread_fence(memory_order_release);
    kinds = a;
}

struct epoll_set;
static struct epoll_set *epoll_sets; /* epoll instances watching stack sockets (see epoll below) */

/* Around fork, our tables' locks are held so that the child's copies are consistent. */
static pthread_mutex_t epoll_lock = PTHREAD_MUTEX_INITIALIZER;
static void before_fork(void) {
    pthread_mutex_lock(&table_lock);
    pthread_mutex_lock(&epoll_lock);
}
static void after_fork_in_parent(void) {
    pthread_mutex_unlock(&epoll_lock);
    pthread_mutex_unlock(&table_lock);
}

/* In a child after fork: the stack sockets it inherited stay its sockets, as the kernel's do (the
 * parent told the server before fork returned, see fork below: each socket now closes when both
 * have closed it). Their data path works at once; the child's first control request makes a
 * session of its own that attaches them. Epoll sets are not shared: an inherited one becomes a
 * plain kernel descriptor in the child (the child makes its own, as pre-fork servers do). */
static pid_t image_pid; /* the process this image runs as (a vfork child shares our memory, not our pid) */

static void after_fork_in_child(void) {
    image_pid = getpid();
    /* Our locks were taken in the prepare hook: the child's copies are released here. */
    pthread_mutex_unlock(&epoll_lock);
    pthread_mutex_unlock(&table_lock);
    if (!kinds) return;
    for (int fd = 0; fd < table_size; fd++) {
        if (atomic_load_explicit(&kinds[fd], memory_order_relaxed) == EPOLL_SET)
            atomic_store_explicit(&kinds[fd], NOT_OURS, memory_order_relaxed);
    }
    epoll_sets = NULL; /* (the parent's; their memory stays with this copy of the heap) */
    if (sko_after_fork_in_child_p) {
        depth++;
        sko_after_fork_in_child_p();
        depth--;
    }
}

/* fork: the server learns, before fork returns to the parent, that the child holds every stack
 * socket the parent holds, so a parent that closes its copy right away (a forking server) does not
 * close the child's. (vfork and posix_spawn children share nothing: they exec or exit.) */
pid_t fork(void) {
    static pid_t (*real_fork)(void);
    if (!real_fork) real_fork = (pid_t (*)(void))dlsym(RTLD_NEXT, "fork");
    int holding = sko_before_fork_p ? SKO(sko_before_fork) : 0;
    pid_t pid = real_fork();
    if (pid > 0 && holding > 0) {
        int e = errno;
        SKO_VOID(sko_after_fork_in_parent, pid);
        errno = e;
    }
    return pid;
}

static void adopt_from_environment(void);

__attribute__((constructor)) static void preload_init(void) {
#define RESOLVE(name, ret, args) REAL(name);
    REAL_FUNCTIONS(RESOLVE)
    table_init();
    image_pid = getpid();
    pthread_atfork(before_fork, after_fork_in_parent, after_fork_in_child);
    adopt_from_environment();
}

static inline int kind_of(int fd) {
    _Atomic uint8_t *k = kinds;
    if (!k || fd < 0 || fd >= table_size) return NOT_OURS;
    return atomic_load_explicit(&k[fd], memory_order_relaxed);
}

/* The socket behind `fd` (the sko descriptor), or -1 when fd is not ours. */
static inline int socket_of(int fd, void *caller) {
    int k = kind_of(fd);
    if (k == NOT_OURS || k == EPOLL_SET || from_library(caller)) return -1;
    return k == SOCKET ? fd : targets[fd];
}

static void mark(int fd, int kind, int target) {
    if (fd < 0 || fd >= table_size) return; /* (callers check `trackable` first) */
    targets[fd] = target;
    atomic_fetch_add(&references[target], 1);
    atomic_store_explicit(&kinds[fd], (uint8_t)kind, memory_order_relaxed);
}

static void forget_in_epoll_sets(int s);

/* Drops descriptor `fd` of socket `s`; closes the socket with its last descriptor. */
static int release(int fd, int s) {
    pthread_mutex_lock(&table_lock);
    atomic_store_explicit(&kinds[fd], NOT_OURS, memory_order_relaxed);
    int left = atomic_fetch_sub(&references[s], 1) - 1;
    pthread_mutex_unlock(&table_lock);
    int rc = 0;
    if (fd != s) rc = REAL(close)(fd); /* an alias: its own kernel descriptor */
    if (left == 0) {
        forget_in_epoll_sets(s);
        int r = SKO(sko_close, s); /* closes the socket's eventfd (descriptor s) too */
        if (fd == s) rc = r;
    }
    /* (The socket's own descriptor going while aliases remain stays open in the kernel, where the
     * socket needs it, until the last alias closes: its number is not reused meanwhile.) */
    return rc;
}

/* ---------------------------------------------------------------- policy */

static int offload_tcp = 1, offload_udp = 1;
static pthread_once_t policy_once = PTHREAD_ONCE_INIT;

static void read_policy(void) {
    const char *t = getenv("SOCKET_OFFLOAD_TYPES");
    if (!t) return;
    offload_tcp = strstr(t, "tcp") != NULL;
    offload_udp = strstr(t, "udp") != NULL;
}

static int wanted(int domain, int type, int protocol) {
    if (domain != AF_INET && domain != AF_INET6) return 0;
    pthread_once(&policy_once, read_policy);
    int base = type & 0xf;
    if (base == SOCK_STREAM) return offload_tcp && (protocol == 0 || protocol == IPPROTO_TCP);
    if (base == SOCK_DGRAM) return offload_udp && (protocol == 0 || protocol == IPPROTO_UDP);
    return 0;
}

static void report_unreachable(int err) {
    static atomic_int said;
    if (atomic_exchange(&said, 1)) return;
    char path[PATH_MAX] = "?";
    if (sko_server_path_p) SKO(sko_server_path, path, sizeof path);
    fprintf(stderr, "socket-offload: no socket server at %s: %s (set SOCKET_SERVER_PATH, or start socket-server)\n",
            path, strerror(err));
}

/* ---------------------------------------------------------------- sockets */

int socket(int domain, int type, int protocol) {
    if (!wanted(domain, type, protocol) || from_library(__builtin_return_address(0))) return REAL(socket)(domain, type, protocol);
    table_init();
    if (!client_ready()) return -1;
    int fd = SKO(sko_socket, domain, type, protocol);
    if (fd >= table_size) { /* beyond the table (a raised descriptor limit): not a socket we could track */
        SKO(sko_close, fd);
        errno = EMFILE;
        return -1;
    }
    if (fd < 0) {
        int e = errno;
        if (e == ENOENT || e == ECONNREFUSED || e == ETIMEDOUT || e == EPERM || e == EACCES || e == ENETDOWN) report_unreachable(e);
        errno = e;
        return -1;
    }
    mark(fd, SOCKET, fd);
    return fd;
}

int socketpair(int domain, int type, int protocol, int sv[2]) {
    static int (*real_socketpair)(int, int, int, int[2]);
    if (!real_socketpair) real_socketpair = dlsym(RTLD_NEXT, "socketpair");
    return real_socketpair(domain, type, protocol, sv); /* always the kernel's (AF_UNIX) */
}

#define ON_SOCKET(fd, call, fallback) do { \
        int s_ = socket_of(fd, __builtin_return_address(0)); \
        if (s_ < 0) return fallback; \
        return call; \
    } while (0)


/* Whether a socket call on stack socket `s` that a signal handler interrupted (EINTR) is to be
 * restarted, as signal(7) says: when the handler was installed with SA_RESTART, unless the socket
 * has a timeout for that direction (SO_RCVTIMEO / SO_SNDTIMEO). Which signal interrupted the call
 * is not known here: the call restarts when every handler the program installed has SA_RESTART
 * (glibc's signal() sets it; programs that want EINTR install theirs with sigaction without it). */
static __thread volatile sig_atomic_t last_signal; /* set by the trampoline (see signals below) */
static int handler_restarts(int sig);

static int restarts(int s, int receiving) {
    struct timeval tv = {0, 0};
    socklen_t len = sizeof tv;
    if (SKO(sko_getsockopt, s, SOL_SOCKET, receiving ? SO_RCVTIMEO : SO_SNDTIMEO, &tv, &len) == 0 && (tv.tv_sec || tv.tv_usec)) return 0;
    /* The signal whose handler interrupted this thread, when the handler is one the program
     * installed through us: its own SA_RESTART decides. */
    int known = handler_restarts(last_signal);
    if (known >= 0) return known;
    for (int sig = 1; sig < NSIG; sig++) {
        struct sigaction sa;
        if (sigaction(sig, NULL, &sa) != 0) continue;
        /* The Swift runtime's own (its backtracer's crash handlers) are not the program's. */
        Dl_info where;
        if (dladdr((void *)sa.sa_sigaction, &where) && where.dli_fname && strstr(where.dli_fname, "libswift")) continue;
        int handled = (sa.sa_flags & SA_SIGINFO) ? sa.sa_sigaction != NULL
                                                  : (sa.sa_handler != SIG_DFL && sa.sa_handler != SIG_IGN);
        if (handled && !(sa.sa_flags & SA_RESTART)) return 0;
    }
    return 1;
}

/* A blocking socket call, restarted after EINTR as `restarts` says. */
#define RESTARTING(s, receiving, call) ({ \
        __typeof__(call) r_; \
        while ((last_signal = 0, r_ = (call)) < 0 && errno == EINTR && restarts(s, receiving)) {} \
        if (r_ < 0 && errno == EAGAIN) atomic_fetch_or_explicit(&drained[s], (receiving) ? 1 : 2, memory_order_relaxed); \
        r_; \
    })

/* A write to a connection that cannot send any more (EPIPE) raises SIGPIPE, as the kernel's does,
 * unless MSG_NOSIGNAL (the stack's sko_* calls never raise it themselves). */
#define WRITING(s, flags, call) ({ \
        __typeof__(call) w_ = (call); \
        if (w_ < 0 && errno == EPIPE && !((flags) & MSG_NOSIGNAL)) { int e_ = errno; pthread_kill(pthread_self(), SIGPIPE); errno = e_; } \
        w_; \
    })


int bind(int fd, const struct sockaddr *a, socklen_t l) { ON_SOCKET(fd, SKO(sko_bind, s_, a, l), REAL(bind)(fd, a, l)); }
int listen(int fd, int b) { ON_SOCKET(fd, SKO(sko_listen, s_, b), REAL(listen)(fd, b)); }
int connect(int fd, const struct sockaddr *a, socklen_t l) { ON_SOCKET(fd, SKO(sko_connect, s_, a, l), REAL(connect)(fd, a, l)); }
int shutdown(int fd, int how) { ON_SOCKET(fd, SKO(sko_shutdown, s_, how), REAL(shutdown)(fd, how)); }
int getsockname(int fd, struct sockaddr *a, socklen_t *l) { ON_SOCKET(fd, SKO(sko_getsockname, s_, a, l), REAL(getsockname)(fd, a, l)); }
int getpeername(int fd, struct sockaddr *a, socklen_t *l) { ON_SOCKET(fd, SKO(sko_getpeername, s_, a, l), REAL(getpeername)(fd, a, l)); }
int getsockopt(int fd, int lv, int n, void *v, socklen_t *l) { ON_SOCKET(fd, SKO(sko_getsockopt, s_, lv, n, v, l), REAL(getsockopt)(fd, lv, n, v, l)); }
int setsockopt(int fd, int lv, int n, const void *v, socklen_t l) { ON_SOCKET(fd, SKO(sko_setsockopt, s_, lv, n, v, l), REAL(setsockopt)(fd, lv, n, v, l)); }

static int accept_common(int fd, struct sockaddr *a, socklen_t *l, int flags, void *caller) {
    int s = socket_of(fd, caller);
    if (s < 0) return REAL(accept4)(fd, a, l, flags);
    int c = RESTARTING(s, 1, SKO(sko_accept4, s, a, l, flags));
    if (c >= 0) mark(c, SOCKET, c);
    return c;
}
int accept(int fd, struct sockaddr *a, socklen_t *l) {
    if (kind_of(fd) == NOT_OURS) return REAL(accept)(fd, a, l); /* the common case: one lookup */
    return accept_common(fd, a, l, 0, __builtin_return_address(0));
}
int accept4(int fd, struct sockaddr *a, socklen_t *l, int flags) { return accept_common(fd, a, l, flags, __builtin_return_address(0)); }

/* ---------------------------------------------------------------- data */

ssize_t send(int fd, const void *b, size_t n, int f) { ON_SOCKET(fd, WRITING(s_, f, RESTARTING(s_, 0, SKO(sko_sendto, s_, b, n, f, NULL, 0))), REAL(send)(fd, b, n, f)); }
ssize_t sendto(int fd, const void *b, size_t n, int f, const struct sockaddr *a, socklen_t l) { ON_SOCKET(fd, WRITING(s_, f, RESTARTING(s_, 0, SKO(sko_sendto, s_, b, n, f, a, l))), REAL(sendto)(fd, b, n, f, a, l)); }
ssize_t sendmsg(int fd, const struct msghdr *m, int f) { ON_SOCKET(fd, WRITING(s_, f, RESTARTING(s_, 0, SKO(sko_sendmsg, s_, m, f))), REAL(sendmsg)(fd, m, f)); }
ssize_t recv(int fd, void *b, size_t n, int f) { ON_SOCKET(fd, RESTARTING(s_, 1, SKO(sko_recvfrom, s_, b, n, f, NULL, NULL)), REAL(recv)(fd, b, n, f)); }
ssize_t recvfrom(int fd, void *b, size_t n, int f, struct sockaddr *a, socklen_t *l) { ON_SOCKET(fd, RESTARTING(s_, 1, SKO(sko_recvfrom, s_, b, n, f, a, l)), REAL(recvfrom)(fd, b, n, f, a, l)); }
ssize_t recvmsg(int fd, struct msghdr *m, int f) { ON_SOCKET(fd, RESTARTING(s_, 1, SKO(sko_recvmsg, s_, m, f)), REAL(recvmsg)(fd, m, f)); }
ssize_t read(int fd, void *b, size_t n) { ON_SOCKET(fd, RESTARTING(s_, 1, SKO(sko_recvfrom, s_, b, n, 0, NULL, NULL)), REAL(read)(fd, b, n)); }
ssize_t write(int fd, const void *b, size_t n) { ON_SOCKET(fd, WRITING(s_, 0, RESTARTING(s_, 0, SKO(sko_sendto, s_, b, n, 0, NULL, 0))), REAL(write)(fd, b, n)); }

/* The _FORTIFY_SOURCE variants packaged programs call. */
ssize_t __read_chk(int fd, void *b, size_t n, size_t size) { (void)size; return read(fd, b, n); }
ssize_t __recv_chk(int fd, void *b, size_t n, size_t size, int f) { (void)size; return recv(fd, b, n, f); }
ssize_t __recvfrom_chk(int fd, void *b, size_t n, size_t size, int f, struct sockaddr *a, socklen_t *l) {
    (void)size;
    return recvfrom(fd, b, n, f, a, l);
}

ssize_t readv(int fd, const struct iovec *v, int n) {
    int s = socket_of(fd, __builtin_return_address(0));
    if (s < 0) return REAL(readv)(fd, v, n);
    struct msghdr m = {.msg_iov = (struct iovec *)v, .msg_iovlen = (size_t)n};
    return RESTARTING(s, 1, SKO(sko_recvmsg, s, &m, 0));
}

ssize_t writev(int fd, const struct iovec *v, int n) {
    int s = socket_of(fd, __builtin_return_address(0));
    if (s < 0) return REAL(writev)(fd, v, n);
    struct msghdr m = {.msg_iov = (struct iovec *)v, .msg_iovlen = (size_t)n};
    return WRITING(s, 0, RESTARTING(s, 0, SKO(sko_sendmsg, s, &m, 0)));
}

int sendmmsg(int fd, struct mmsghdr *v, unsigned int n, int f) {
    int s = socket_of(fd, __builtin_return_address(0));
    if (s < 0) return REAL(sendmmsg)(fd, v, n, f);
    unsigned int i = 0;
    for (; i < n; i++) {
        ssize_t r = SKO(sko_sendmsg, s, &v[i].msg_hdr, f);
        if (r < 0) return i > 0 ? (int)i : -1;
        v[i].msg_len = (unsigned int)r;
    }
    return (int)i;
}

int recvmmsg(int fd, struct mmsghdr *v, unsigned int n, int f, struct timespec *t) {
    int s = socket_of(fd, __builtin_return_address(0));
    if (s < 0) return REAL(recvmmsg)(fd, v, n, f, t);
    unsigned int i = 0;
    for (; i < n; i++) {
        /* The first waits as asked; the rest only take what is already there (Linux's behaviour
         * without MSG_WAITFORONE is to wait for all; the common callers pass MSG_WAITFORONE or
         * non-blocking sockets). */
        ssize_t r = SKO(sko_recvmsg, s, &v[i].msg_hdr, i == 0 ? (f & ~MSG_WAITFORONE) : (f | MSG_DONTWAIT));
        if (r < 0) return i > 0 ? (int)i : -1;
        v[i].msg_len = (unsigned int)r;
    }
    return (int)i;
}

ssize_t sendfile(int out, int in, off_t *offset, size_t count) {
    int s = socket_of(out, __builtin_return_address(0));
    if (s < 0) {
        if (socket_of(in, __builtin_return_address(0)) >= 0) { errno = EINVAL; return -1; }
        return REAL(sendfile)(out, in, offset, count);
    }
    /* From a file into a stack socket: read and send, in chunks. */
    if (socket_of(in, __builtin_return_address(0)) >= 0) { errno = EINVAL; return -1; }
    static __thread char buf[65536];
    size_t done = 0;
    off_t pos = offset ? *offset : 0;
    while (done < count) {
        size_t want = count - done < sizeof buf ? count - done : sizeof buf;
        ssize_t got = offset ? pread(in, buf, want, pos) : REAL(read)(in, buf, want);
        if (got < 0) { if (done) break; return -1; }
        if (got == 0) break;
        ssize_t sent = SKO(sko_sendto, s, buf, (size_t)got, MSG_NOSIGNAL, NULL, 0);
        if (sent < 0) {
            int e = errno;
            if (!offset) lseek(in, -got, SEEK_CUR); /* the file position stays where the send stopped */
            errno = e;
            if (done) break;
            return -1;
        }
        done += (size_t)sent;
        pos += sent;
        if (sent < got) {
            if (!offset) lseek(in, sent - got, SEEK_CUR);
            break;
        }
    }
    if (offset) *offset = pos;
    return (ssize_t)done;
}

/* ---------------------------------------------------------------- descriptors */

static void forget_epoll_set(int epfd);

int close(int fd) {
    int s = socket_of(fd, __builtin_return_address(0));
    if (s >= 0) return release(fd, s);
    int k = kind_of(fd);
    if (k == EPOLL_SET) forget_epoll_set(fd);
    return REAL(close)(fd);
}

int close_range(unsigned int first, unsigned int last, int flags) {
    static int (*real_close_range)(unsigned int, unsigned int, int);
    if (!real_close_range) real_close_range = dlsym(RTLD_NEXT, "close_range");
    if (!real_close_range) { errno = ENOSYS; return -1; }
    if (!(flags & CLOSE_RANGE_CLOEXEC)) {
        for (unsigned int fd = first; fd <= last && (int)fd < table_size; fd++) {
            int k = kind_of((int)fd);
            if (k == SOCKET || k == ALIAS) close((int)fd);
            else if (k == EPOLL_SET) forget_epoll_set((int)fd);
            if (fd == UINT_MAX) break;
        }
    }
    return real_close_range(first, last, flags);
}

/* glibc's closefrom closes through its internal close_range, out of our reach: through ours. */
void closefrom(int lowfd) {
    if (lowfd < 0) lowfd = 0;
    close_range((unsigned int)lowfd, ~0U, 0);
}

static int alias(int s, int newfd) {
    mark(newfd, ALIAS, s);
    return newfd;
}

int dup(int fd) {
    int s = socket_of(fd, __builtin_return_address(0));
    int n = REAL(dup)(fd);
    return (s < 0 || n < 0) ? n : alias(s, n);
}

static int dup_onto(int fd, int newfd, int flags, void *caller) {
    if (fd == newfd) { errno = EINVAL; return -1; } /* dup3's rule (dup2 does not come here) */
    if (REAL(fcntl)(fd, F_GETFD) < 0) return -1;      /* EBADF before newfd is touched */
    int s = socket_of(fd, caller);
    int t = socket_of(newfd, caller);
    if (t >= 0) release(newfd, t); /* dup2 closes newfd first */
    else if (kind_of(newfd) == EPOLL_SET) forget_epoll_set(newfd);
    int n = REAL(dup3)(fd, newfd, flags);
    return (s < 0 || n < 0) ? n : alias(s, n);
}
int dup2(int fd, int newfd) {
    if (fd == newfd) return REAL(dup2)(fd, newfd);
    return dup_onto(fd, newfd, 0, __builtin_return_address(0));
}
int dup3(int fd, int newfd, int flags) { return dup_onto(fd, newfd, flags, __builtin_return_address(0)); }

static int fcntl_common(int fd, int cmd, long arg, void *caller) {
    int s = socket_of(fd, caller);
    if (s >= 0) {
        switch (cmd) {
        case F_GETFL:
        case F_SETFL:
            return SKO(sko_fcntl, s, cmd, (int)arg);
        case F_DUPFD:
        case F_DUPFD_CLOEXEC: {
            int n = REAL(fcntl)(fd, cmd, arg);
            return n < 0 ? n : alias(s, n);
        }
        default:
            break; /* F_GETFD/F_SETFD and the rest: the descriptor's own */
        }
    }
    return REAL(fcntl)(fd, cmd, arg);
}

int fcntl(int fd, int cmd, ...) {
    va_list ap;
    va_start(ap, cmd);
    long arg = va_arg(ap, long);
    va_end(ap);
    return fcntl_common(fd, cmd, arg, __builtin_return_address(0));
}
int fcntl64(int fd, int cmd, ...) {
    va_list ap;
    va_start(ap, cmd);
    long arg = va_arg(ap, long);
    va_end(ap);
    return fcntl_common(fd, cmd, arg, __builtin_return_address(0));
}

int ioctl(int fd, unsigned long request, ...) {
    va_list ap;
    va_start(ap, request);
    void *arg = va_arg(ap, void *);
    va_end(ap);
    int s = socket_of(fd, __builtin_return_address(0));
    if (s >= 0 && (request == FIONREAD || request == FIONBIO || request == TIOCOUTQ)) return SKO(sko_ioctl, s, request, (int *)arg);
    if (s >= 0 && (request & 0xff00) == 0x8900) {
        /* Interface requests (SIOCGIFADDR, SIOCGIFCONF...) about the kernel's interfaces, asked on
         * any socket: a kernel datagram socket of our own answers them. */
        static atomic_int kernel_socket = -1;
        int k = atomic_load(&kernel_socket);
        if (k < 0) {
            int n = REAL(socket)(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
            int expected = -1;
            if (n >= 0 && !atomic_compare_exchange_strong(&kernel_socket, &expected, n)) REAL(close)(n);
            k = atomic_load(&kernel_socket);
        }
        return REAL(ioctl)(k, request, arg);
    }
    return REAL(ioctl)(fd, request, arg);
}

/* ---------------------------------------------------------------- readiness */

/* poll over a set holding stack sockets: sko_poll, with aliases given as their sockets. */
static int poll_ours(struct pollfd *fds, nfds_t n, int timeout, const sigset_t *mask, int *handled, void *caller) {
    int any = 0;
    for (nfds_t i = 0; i < n && !any; i++) any = socket_of(fds[i].fd, caller) >= 0;
    *handled = any;
    if (!any) return 0;
    struct pollfd local[64];
    struct pollfd *p = n <= 64 ? local : malloc(n * sizeof *p);
    if (!p) { errno = ENOMEM; return -1; }
    for (nfds_t i = 0; i < n; i++) {
        int s = socket_of(fds[i].fd, caller);
        p[i] = (struct pollfd){s >= 0 ? s : fds[i].fd, fds[i].events, 0};
    }
    int rc = SKO(sko_ppoll, p, n, timeout, mask);
    for (nfds_t i = 0; i < n; i++) fds[i].revents = p[i].revents;
    if (p != local) free(p);
    return rc;
}

int poll(struct pollfd *fds, nfds_t n, int timeout) {
    int handled;
    int rc = poll_ours(fds, n, timeout, NULL, &handled, __builtin_return_address(0));
    return handled ? rc : REAL(poll)(fds, n, timeout);
}

int __poll_chk(struct pollfd *fds, nfds_t n, int timeout, size_t len) {
    (void)len;
    return poll(fds, n, timeout);
}

static int timeout_ms(const struct timespec *t) {
    if (!t) return -1;
    long long ms = (long long)t->tv_sec * 1000 + (t->tv_nsec + 999999) / 1000000;
    return ms > INT_MAX ? INT_MAX : (int)ms;
}

int ppoll(struct pollfd *fds, nfds_t n, const struct timespec *t, const sigset_t *mask) {
    int handled;
    for (nfds_t i = 0; i < n; i++) {
        if (socket_of(fds[i].fd, __builtin_return_address(0)) < 0) continue;
        /* (The library's sleep is a ppoll with `mask`: atomic, as the kernel's.) */
        return poll_ours(fds, n, timeout_ms(t), mask, &handled, __builtin_return_address(0));
    }
    return REAL(ppoll)(fds, n, t, mask);
}

int __ppoll_chk(struct pollfd *fds, nfds_t n, const struct timespec *t, const sigset_t *mask, size_t len) {
    (void)len;
    return ppoll(fds, n, t, mask);
}

/* select over a set holding stack sockets, as poll: readable = POLLIN|POLLHUP|POLLERR (Linux's
 * POLLIN_SET), writable = POLLOUT|POLLERR, exceptional = POLLPRI. */
static int select_ours(int nfds, fd_set *r, fd_set *w, fd_set *x, int timeout, const sigset_t *mask, int *handled, void *caller) {
    *handled = 0;
    struct pollfd local[FD_SETSIZE]; /* select's sets hold at most FD_SETSIZE descriptors */
    int n = 0, any = 0;
    for (int fd = 0; fd < nfds && fd < FD_SETSIZE; fd++) {
        short ev = (short)((r && FD_ISSET(fd, r) ? POLLIN : 0) | (w && FD_ISSET(fd, w) ? POLLOUT : 0) | (x && FD_ISSET(fd, x) ? POLLPRI : 0));
        if (!ev) continue;
        if (socket_of(fd, caller) >= 0) any = 1;
        local[n++] = (struct pollfd){fd, ev, 0};
    }
    if (!any) return 0;
    *handled = 1;
    int h;
    int rc = poll_ours(local, (nfds_t)n, timeout, mask, &h, caller);
    if (rc < 0) return rc;
    for (int i = 0; i < n; i++)
        if (local[i].revents & POLLNVAL) { errno = EBADF; return -1; } /* a closed descriptor in a set */
    if (r) FD_ZERO(r);
    if (w) FD_ZERO(w);
    if (x) FD_ZERO(x);
    int count = 0;
    for (int i = 0; i < n; i++) {
        short re = local[i].revents;
        if ((local[i].events & POLLIN) && (re & (POLLIN | POLLHUP | POLLERR))) { FD_SET(local[i].fd, r); count++; }
        if ((local[i].events & POLLOUT) && (re & (POLLOUT | POLLERR))) { FD_SET(local[i].fd, w); count++; }
        if ((local[i].events & POLLPRI) && (re & POLLPRI)) { FD_SET(local[i].fd, x); count++; }
    }
    return count;
}

int select(int nfds, fd_set *r, fd_set *w, fd_set *x, struct timeval *t) {
    int handled;
    int ms = t ? (int)(t->tv_sec * 1000 + (t->tv_usec + 999) / 1000) : -1;
    struct timespec start;
    clock_gettime(CLOCK_MONOTONIC, &start);
    int rc = select_ours(nfds, r, w, x, ms, NULL, &handled, __builtin_return_address(0));
    if (!handled) return REAL(select)(nfds, r, w, x, t);
    if (t && rc >= 0) { /* Linux writes back the time left */
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        long long left = (long long)t->tv_sec * 1000000 + t->tv_usec -
                         ((long long)(now.tv_sec - start.tv_sec) * 1000000 + (now.tv_nsec - start.tv_nsec) / 1000);
        if (left < 0 || rc == 0) left = 0;
        t->tv_sec = left / 1000000;
        t->tv_usec = left % 1000000;
    }
    return rc;
}

int pselect(int nfds, fd_set *r, fd_set *w, fd_set *x, const struct timespec *t, const sigset_t *mask) {
    int ours = 0;
    for (int fd = 0; fd < nfds && fd < FD_SETSIZE && !ours; fd++)
        if ((r && FD_ISSET(fd, r)) || (w && FD_ISSET(fd, w)) || (x && FD_ISSET(fd, x))) ours = socket_of(fd, __builtin_return_address(0)) >= 0;
    if (!ours) return REAL(pselect)(nfds, r, w, x, t, mask);
    int handled;
    int rc = select_ours(nfds, r, w, x, timeout_ms(t), mask, &handled, __builtin_return_address(0));
    return handled ? rc : REAL(pselect)(nfds, r, w, x, t, mask);
}

/* ---------------------------------------------------------------- epoll
 *
 * A stack socket cannot be put in the kernel's epoll set as itself (its eventfd's readiness is not
 * the socket's). An epoll instance keeps its stack sockets in a list of ours; epoll_wait reports
 * them from sko_poll and the kernel's part from the real epoll, and sleeps in sko_poll on both
 * (the epoll descriptor itself is pollable). Level-triggered, EPOLLET and EPOLLONESHOT (disarmed
 * until EPOLL_CTL_MOD). An edge is a wanted bit that was not there at the last look, or more bytes
 * to read than then (FIONREAD): new data on a stream that was readable already is an edge, as in
 * the kernel; a datagram behind another one is not seen as one (FIONREAD is the first's size).
 *
 * A set of ours inside another set (nesting): the inner set is a member of the outer one's list
 * (`socket` -1, `fd` the inner epoll descriptor), ready when one of its stack sockets is ready for
 * what it watches (an edge-triggered one only with an edge not yet reported) or its kernel part is
 * readable; the outer set sleeps on the inner set's stack sockets and descriptor too. One level of
 * ours: an inner set's own inner sets count through their kernel part only.
 */

struct watched { int fd; int socket; uint32_t events; epoll_data_t data; short last; int armed; int readable; };
/* `wake`: an eventfd in the set's kernel part, written on every change of ours while a thread
 * waits, so that it looks again at the set (an EPOLL_CTL_ADD from an acceptor thread, a ONESHOT
 * re-armed by a worker). Its events are never returned. */
/* `users`: threads inside epoll_wait on the set; a set closed meanwhile (`dead`) is freed by the
 * last of them. `cursor`: where the next look starts (fairness when more are ready than asked). */
struct epoll_set {
    int epfd, wake, count, capacity, cursor, users, dead;
    struct watched *items;
    struct epoll_set *next;
    pthread_mutex_t lock;
};
#define WAKE_TAG 0x736b6f77616b6521ull /* data.u64 of `wake` in the kernel set */

static void forget_epoll_set(int epfd) {
    pthread_mutex_lock(&epoll_lock);
    /* Closed, it leaves the sets it was a member of (nesting), as the kernel's does. */
    for (struct epoll_set *o = epoll_sets; o; o = o->next) {
        pthread_mutex_lock(&o->lock);
        for (int i = 0; i < o->count;) {
            if (o->items[i].socket < 0 && o->items[i].fd == epfd) o->items[i] = o->items[--o->count];
            else i++;
        }
        pthread_mutex_unlock(&o->lock);
    }
    for (struct epoll_set **l = &epoll_sets; *l; l = &(*l)->next) {
        if ((*l)->epfd != epfd) continue;
        struct epoll_set *e = *l;
        *l = e->next;
        if (e->users > 0) {
            e->dead = 1; /* the last waiter frees it */
        } else {
            if (e->wake >= 0) REAL(close)(e->wake);
            free(e->items);
            free(e);
        }
        break;
    }
    atomic_store_explicit(&kinds[epfd], NOT_OURS, memory_order_relaxed);
    pthread_mutex_unlock(&epoll_lock);
}

static struct epoll_set *epoll_set_of(int epfd, int create) {
    pthread_mutex_lock(&epoll_lock);
    struct epoll_set *e = epoll_sets;
    while (e && e->epfd != epfd) e = e->next;
    if (!e && create) {
        e = calloc(1, sizeof *e);
        int wake = e ? eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC) : -1;
        struct epoll_event we = {.events = EPOLLIN, .data.u64 = WAKE_TAG};
        /* (This also checks that epfd is an epoll instance: EBADF / EINVAL otherwise.) */
        if (e && (wake < 0 || REAL(epoll_ctl)(epfd, EPOLL_CTL_ADD, wake, &we) < 0)) {
            int err = errno;
            if (wake >= 0) REAL(close)(wake);
            free(e);
            e = NULL;
            errno = err;
        }
        if (e) {
            e->epfd = epfd;
            e->wake = wake;
            pthread_mutex_init(&e->lock, NULL);
            e->next = epoll_sets;
            epoll_sets = e;
            if (epfd >= 0 && epfd < table_size) atomic_store_explicit(&kinds[epfd], EPOLL_SET, memory_order_relaxed);
        }
    }
    pthread_mutex_unlock(&epoll_lock);
    return e;
}

/* Linux gives the epoll and poll bits the same values: converting is masking. */
_Static_assert(EPOLLIN == POLLIN && EPOLLOUT == POLLOUT && EPOLLPRI == POLLPRI && EPOLLERR == POLLERR &&
               EPOLLHUP == POLLHUP && EPOLLRDHUP == POLLRDHUP, "epoll and poll bits differ");
static short poll_events(uint32_t ev) { return (short)(ev & (EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLPRI)); }
static uint32_t epoll_bits(short re) { return (uint32_t)re & (EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLPRI | EPOLLERR | EPOLLHUP); }

static int contains_set(int outer, int inner);

int epoll_ctl(int epfd, int op, int fd, struct epoll_event *ev) {
    int s = socket_of(fd, __builtin_return_address(0));
    int nested = s < 0 && kind_of(fd) == EPOLL_SET && fd != epfd && !from_library(__builtin_return_address(0));
    if (s < 0 && !nested) return REAL(epoll_ctl)(epfd, op, fd, ev);
    if (nested && op == EPOLL_CTL_ADD && contains_set(fd, epfd)) { errno = ELOOP; return -1; }
    struct epoll_set *e = epoll_set_of(epfd, op == EPOLL_CTL_ADD);
    if (!e) {
        if (op != EPOLL_CTL_ADD) errno = ENOENT;
        return -1;
    }
    pthread_mutex_lock(&e->lock);
    int i = 0;
    while (i < e->count && e->items[i].fd != fd) i++;
    int rc = 0;
    switch (op) {
    case EPOLL_CTL_ADD:
        if (i < e->count) { errno = EEXIST; rc = -1; break; }
        if (!ev) { errno = EFAULT; rc = -1; break; }
        if (e->count == e->capacity) {
            int cap = e->capacity ? e->capacity * 2 : 8;
            struct watched *grown = realloc(e->items, (size_t)cap * sizeof *grown);
            if (!grown) { errno = ENOMEM; rc = -1; break; }
            e->items = grown;
            e->capacity = cap;
        }
        e->items[e->count++] = (struct watched){fd, s, ev->events, ev->data, 0, 1};
        break;
    case EPOLL_CTL_MOD:
        if (i == e->count) { errno = ENOENT; rc = -1; break; }
        if (!ev) { errno = EFAULT; rc = -1; break; }
        e->items[i] = (struct watched){fd, s, ev->events, ev->data, 0, 1};
        break;
    case EPOLL_CTL_DEL:
        if (i == e->count) { errno = ENOENT; rc = -1; break; }
        e->items[i] = e->items[--e->count];
        break;
    default:
        errno = EINVAL;
        rc = -1;
    }
    pthread_mutex_unlock(&e->lock);
    /* Only a thread already waiting needs the wake-up (a later one reads the list afresh); so
     * the set's kernel part, which an outer set polls, is not left readable for nothing. */
    pthread_mutex_lock(&epoll_lock);
    int waiting = e->users > 0;
    pthread_mutex_unlock(&epoll_lock);
    if (rc == 0 && waiting) {
        uint64_t one = 1;
        ssize_t w = REAL(write)(e->wake, &one, sizeof one);
        (void)w;
    }
    return rc;
}

/* A stack socket closed (its last descriptor): Linux drops it from every epoll set. */
static void forget_in_epoll_sets(int s) {
    pthread_mutex_lock(&epoll_lock);
    for (struct epoll_set *e = epoll_sets; e; e = e->next) {
        pthread_mutex_lock(&e->lock);
        for (int i = 0; i < e->count;) {
            if (e->items[i].socket == s) e->items[i] = e->items[--e->count];
            else i++;
        }
        pthread_mutex_unlock(&e->lock);
    }
    pthread_mutex_unlock(&epoll_lock);
}

static int epoll_wait_set(struct epoll_set *e, int epfd, struct epoll_event *out, int max, int timeout, const sigset_t *mask);

static int epoll_wait_common(int epfd, struct epoll_event *out, int max, int timeout, const sigset_t *mask) {
    pthread_mutex_lock(&epoll_lock);
    struct epoll_set *e = NULL;
    if (kind_of(epfd) == EPOLL_SET)
        for (e = epoll_sets; e && e->epfd != epfd; e = e->next) {}
    if (e) e->users++;
    pthread_mutex_unlock(&epoll_lock);
    int rc, err;
    if (!e || e->count == 0 || max <= 0) rc = REAL(epoll_pwait)(epfd, out, max, timeout, mask);
    else rc = epoll_wait_set(e, epfd, out, max, timeout, mask);
    err = errno;
    if (e) {
        pthread_mutex_lock(&epoll_lock);
        int last = --e->users == 0 && e->dead;
        pthread_mutex_unlock(&epoll_lock);
        if (last) {
            if (e->wake >= 0) REAL(close)(e->wake);
            free(e->items);
            free(e);
        }
    }
    errno = err;
    return rc;
}

/* A stack socket of an inner set, watched by the outer set's wait (see nesting above). */
struct inner_member { int owner; short wanted; short last; int edge; };

/* Appends to p (from index *k) the stack sockets of the set behind inner epoll descriptor `fd`,
 * recording in m what each is watched for; returns 0, or -1 when out of memory. */
static int add_inner_members(int fd, int owner, struct pollfd **p, struct inner_member **m, int *k, int *cap) {
    pthread_mutex_lock(&epoll_lock);
    struct epoll_set *inner = epoll_sets;
    while (inner && inner->epfd != fd) inner = inner->next;
    int rc = 0;
    if (inner) {
        pthread_mutex_lock(&inner->lock);
        for (int j = 0; j < inner->count && rc == 0; j++) {
            struct watched *w = &inner->items[j];
            if (w->socket < 0 || !w->armed) continue;
            if (*k + 2 > *cap) {
                int grown = *cap * 2 + 8;
                struct pollfd *np = realloc(*p, (size_t)grown * sizeof **p);
                if (np) *p = np;
                struct inner_member *nm = np ? realloc(*m, (size_t)grown * sizeof **m) : NULL;
                if (nm) *m = nm;
                if (!np || !nm) { rc = -1; break; }
                *cap = grown;
            }
            short last = w->last;
            uint8_t d = atomic_load_explicit(&drained[w->socket], memory_order_relaxed);
            if (d & 1) last &= (short)~POLLIN;
            if (d & 2) last &= (short)~POLLOUT;
            (*p)[*k] = (struct pollfd){w->socket, poll_events(w->events), 0};
            (*m)[*k] = (struct inner_member){owner, poll_events(w->events), last, (w->events & EPOLLET) != 0};
            (*k)++;
        }
        pthread_mutex_unlock(&inner->lock);
    }
    pthread_mutex_unlock(&epoll_lock);
    return rc;
}

static int epoll_wait_set(struct epoll_set *e, int epfd, struct epoll_event *out, int max, int timeout, const sigset_t *mask) {
    struct timespec start;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (;;) {
        pthread_mutex_lock(&e->lock);
        int n = e->count, cap = n + 8, inners = 0;
        /* (On the heap: a server's set may hold thousands of sockets.) Layout: the set's members,
         * then the stack sockets of inner sets, then the set's own descriptor. */
        struct pollfd *p = malloc((size_t)cap * sizeof *p);
        struct inner_member *m = malloc((size_t)cap * sizeof *m);
        if (!p || !m) {
            pthread_mutex_unlock(&e->lock);
            free(p);
            free(m);
            errno = ENOMEM;
            return -1;
        }
        for (int i = 0; i < n; i++) {
            struct watched *w = &e->items[i];
            p[i] = (struct pollfd){w->socket >= 0 ? w->socket : w->fd, w->armed ? (w->socket >= 0 ? poll_events(w->events) : POLLIN) : 0, 0};
            inners += w->socket < 0;
        }
        int inner_fds[inners > 0 ? inners : 1], inner_index[inners > 0 ? inners : 1], x = 0;
        for (int i = 0; i < n; i++)
            if (e->items[i].socket < 0 && e->items[i].armed) { inner_fds[x] = e->items[i].fd; inner_index[x++] = i; }
        pthread_mutex_unlock(&e->lock);
        int k = n;
        for (int j = 0; j < x; j++) {
            if (add_inner_members(inner_fds[j], inner_index[j], &p, &m, &k, &cap) < 0) {
                free(p);
                free(m);
                errno = ENOMEM;
                return -1;
            }
        }
        int rc = SKO(sko_poll, p, (unsigned long)k, 0);
        if (rc < 0) { free(p); free(m); return -1; }
        /* An inner set is ready (POLLIN) when its kernel part is or one of its sockets is. */
        for (int j = n; j < k; j++) {
            short re = p[j].revents & (short)(m[j].wanted | POLLERR | POLLHUP);
            if (m[j].edge) re &= (short)~m[j].last;
            if (re) p[m[j].owner].revents |= POLLIN;
        }
        int got = 0;
        pthread_mutex_lock(&e->lock);
        int first = n > 0 ? e->cursor % n : 0;
        e->cursor = first + 1;
        for (int c = 0; c < n && got < max; c++) {
            int i = (first + c) % n;
            if (i >= e->count) continue;
            struct watched *w = &e->items[i];
            if ((w->socket >= 0 ? w->socket : w->fd) != p[i].fd || !w->armed) continue;
            short re = p[i].revents;
            if (re & POLLNVAL) continue;
            if (w->socket < 0) re &= POLLIN; /* an epoll descriptor reports EPOLLIN only */
            if (w->events & EPOLLET) {
                short fresh = (short)(re & ~w->last);
                int more = 0;
                if (w->socket >= 0) {
                    /* Emptied or filled since the last look (EAGAIN): the next data or room is an edge. */
                    uint8_t d = atomic_exchange_explicit(&drained[w->socket], 0, memory_order_relaxed);
                    if (d & 1) { w->last &= (short)~POLLIN; w->readable = 0; }
                    if (d & 2) w->last &= (short)~POLLOUT;
                    fresh = (short)(re & ~w->last);
                    int readable = 0;
                    if (re & POLLIN) SKO(sko_ioctl, w->socket, FIONREAD, &readable);
                    more = readable > w->readable;
                    w->readable = readable;
                }
                w->last = re;
                if (!(fresh & (poll_events(w->events) | POLLERR | POLLHUP)) && !(more && (w->events & EPOLLIN))) continue;
            } else if (!re) {
                continue;
            }
            out[got].events = epoll_bits(re) & (w->events | EPOLLERR | EPOLLHUP);
            out[got].data = w->data;
            got++;
            if (w->events & EPOLLONESHOT) w->armed = 0;
        }
        pthread_mutex_unlock(&e->lock);
        if (got < max) {
            int kk = REAL(epoll_wait)(epfd, out + got, max - got, 0);
            for (int i = 0; i < kk; i++) {
                if (out[got + i].data.u64 != WAKE_TAG) continue;
                uint64_t v;
                ssize_t r = REAL(read)(e->wake, &v, sizeof v);
                (void)r;
                out[got + i] = out[got + kk - 1];
                kk--;
                i--;
            }
            if (kk > 0) got += kk;
        }
        if (got > 0) { free(p); free(m); return got; }
        int left = timeout;
        if (timeout >= 0) {
            struct timespec now;
            clock_gettime(CLOCK_MONOTONIC, &now);
            long elapsed = (now.tv_sec - start.tv_sec) * 1000 + (now.tv_nsec - start.tv_nsec) / 1000000;
            if (elapsed >= timeout) { free(p); free(m); return 0; }
            left = timeout - (int)elapsed;
        }
        /* Sleep until one of ours or the kernel's part changes. ET sockets already reported would
         * wake the sleep at once: bound it to a millisecond then. */
        int has_et = 0;
        for (int i = 0; i < k; i++) if (p[i].revents) has_et = 1;
        if (has_et && (left < 0 || left > 1)) left = 1;
        p[k] = (struct pollfd){epfd, POLLIN, 0}; /* (cap > k always: add_inner_members leaves room) */
        int w = SKO(sko_ppoll, p, (unsigned long)k + 1, left, mask);
        int err = errno;
        free(p);
        free(m);
        if (w < 0) { errno = err; return -1; }
    }
}

/* Whether the set behind epoll descriptor `outer` has `inner` as a member (a loop if added). */
static int contains_set(int outer, int inner) {
    pthread_mutex_lock(&epoll_lock);
    struct epoll_set *e = epoll_sets;
    while (e && e->epfd != outer) e = e->next;
    int found = 0;
    if (e) {
        pthread_mutex_lock(&e->lock);
        for (int i = 0; i < e->count; i++) found |= e->items[i].socket < 0 && e->items[i].fd == inner;
        pthread_mutex_unlock(&e->lock);
    }
    pthread_mutex_unlock(&epoll_lock);
    return found;
}

int epoll_wait(int epfd, struct epoll_event *out, int max, int timeout) { return epoll_wait_common(epfd, out, max, timeout, NULL); }
int epoll_pwait(int epfd, struct epoll_event *out, int max, int timeout, const sigset_t *mask) { return epoll_wait_common(epfd, out, max, timeout, mask); }

/* epoll_pwait2: a timespec timeout (NULL: none). A set with stack sockets waits to the
 * millisecond, rounded up, as the library's waits do; the kernel's sets get it as it is. */
int epoll_pwait2(int epfd, struct epoll_event *out, int max, const struct timespec *timeout, const sigset_t *mask) {
    static int (*real)(int, struct epoll_event *, int, const struct timespec *, const sigset_t *);
    if (!real) real = (int (*)(int, struct epoll_event *, int, const struct timespec *, const sigset_t *))dlsym(RTLD_NEXT, "epoll_pwait2");
    if (kind_of(epfd) != EPOLL_SET) {
        if (!real) { errno = ENOSYS; return -1; }
        return real(epfd, out, max, timeout, mask);
    }
    int ms = -1;
    if (timeout) {
        if (timeout->tv_sec < 0 || timeout->tv_nsec < 0 || timeout->tv_nsec >= 1000000000L) { errno = EINVAL; return -1; }
        long long t = (long long)timeout->tv_sec * 1000 + (timeout->tv_nsec + 999999) / 1000000;
        ms = t > INT_MAX ? INT_MAX : (int)t;
    }
    return epoll_wait_common(epfd, out, max, ms, mask);
}

/* ---------------------------------------------------------------- exec
 *
 * A stack socket survives exec as a kernel socket does: every descriptor of one that is not
 * FD_CLOEXEC stays a descriptor of it in the new program. Before the exec, the client library has
 * the server hold those sockets for the new program and writes the environment entry
 * SOCKET_OFFLOAD_EXEC=FD/HANDLE/NONBLOCKING/MEMFD,... that names them (see ProcessInheritance.swift);
 * the new program's library (LD_PRELOAD is kept) marks those descriptors as stack sockets again in
 * its constructor and adopts each on first use. If the exec fails, nothing changes. Sockets whose
 * every descriptor is FD_CLOEXEC are closed by the exec, in an orderly way (FIN after queued data).
 * A vfork child's exec (a different pid in our memory) carries nothing. */

extern char **environ;
static const char exec_variable[] = "SOCKET_OFFLOAD_EXEC=";
static char *exec_entry; /* the entry of the exec being prepared (freed if it fails) */

/* The environment for an exec from `envp` plus the entry naming the stack sockets that survive
 * it; NULL when none does (exec with `envp` as it is). */
static char **prepare_exec(char *const envp[]) {
    if (!sko_before_exec_p || !kinds || getpid() != image_pid) return NULL;
    int *fds = malloc(sizeof(int) * 2 * 1024), n = 0, capacity = 1024;
    if (!fds) return NULL;
    for (int fd = 0; fd < table_size; fd++) {
        int k = kind_of(fd);
        if (k != SOCKET && k != ALIAS) continue;
        int flags = REAL(fcntl)(fd, F_GETFD);
        if (flags < 0 || (flags & FD_CLOEXEC)) continue;
        if (n == capacity) {
            int *more = realloc(fds, sizeof(int) * 4 * (size_t)capacity);
            if (!more) break;
            memmove(more + 2 * capacity, more + capacity, sizeof(int) * (size_t)capacity);
            fds = more;
            capacity *= 2;
        }
        fds[n] = fd;
        fds[capacity + n] = k == SOCKET ? fd : targets[fd];
        n++;
    }
    size_t size = 64 * 1024;
    char *entry = n ? malloc(sizeof exec_variable + size) : NULL;
    size_t len = entry ? SKO(sko_before_exec, fds, fds + capacity, (size_t)n, entry, sizeof exec_variable + size) : 0;
    free(fds);
    if (len == 0) { free(entry); return NULL; }
    size_t count = 0;
    while (envp && envp[count]) count++;
    char **env = malloc(sizeof(char *) * (count + 2));
    if (!env) { SKO_VOID(sko_after_failed_exec); free(entry); return NULL; }
    size_t k = 0;
    for (size_t i = 0; i < count; i++)
        if (strncmp(envp[i], exec_variable, sizeof exec_variable - 1) != 0) env[k++] = envp[i];
    env[k++] = entry;
    env[k] = NULL;
    exec_entry = entry;
    return env;
}

/* The exec prepared with `env` failed: the process keeps its sockets as they were. */
static void exec_failed(char **env) {
    if (!env) return;
    int e = errno;
    SKO_VOID(sko_after_failed_exec);
    free(exec_entry);
    exec_entry = NULL;
    free(env);
    errno = e;
}

#define EXEC_WITH(real_call, envp) ({ \
        char **env_ = prepare_exec(envp); \
        char *const *use_ = env_ ? env_ : (envp); \
        (void)use_; \
        int rc_ = real_call; \
        exec_failed(env_); \
        rc_; \
    })

int execve(const char *path, char *const argv[], char *const envp[]) {
    static int (*real)(const char *, char *const[], char *const[]);
    if (!real) real = (int (*)(const char *, char *const[], char *const[]))dlsym(RTLD_NEXT, "execve");
    return EXEC_WITH(real(path, argv, use_), envp);
}

int execvpe(const char *file, char *const argv[], char *const envp[]) {
    static int (*real)(const char *, char *const[], char *const[]);
    if (!real) real = (int (*)(const char *, char *const[], char *const[]))dlsym(RTLD_NEXT, "execvpe");
    return EXEC_WITH(real(file, argv, use_), envp);
}

int fexecve(int fd, char *const argv[], char *const envp[]) {
    static int (*real)(int, char *const[], char *const[]);
    if (!real) real = (int (*)(int, char *const[], char *const[]))dlsym(RTLD_NEXT, "fexecve");
    return EXEC_WITH(real(fd, argv, use_), envp);
}

int execv(const char *path, char *const argv[]) { return execve(path, argv, environ); }
int execvp(const char *file, char *const argv[]) { return execvpe(file, argv, environ); }

/* execl, execlp, execle: their arguments as an array (up to the NULL; execle's envp follows). */
#define ARGV_FROM_VA(arg, argv, after) do { \
        va_list ap_; size_t n_ = 1; \
        va_start(ap_, arg); while (va_arg(ap_, char *)) n_++; va_end(ap_); \
        argv = alloca(sizeof(char *) * (n_ + 1)); \
        argv[0] = (char *)(arg); \
        va_start(ap_, arg); \
        for (size_t i_ = 1; i_ <= n_; i_++) argv[i_] = va_arg(ap_, char *); \
        after; \
        va_end(ap_); \
    } while (0)

int execl(const char *path, const char *arg, ...) {
    char **argv;
    ARGV_FROM_VA(arg, argv, (void)0);
    return execve(path, argv, environ);
}

int execlp(const char *file, const char *arg, ...) {
    char **argv;
    ARGV_FROM_VA(arg, argv, (void)0);
    return execvpe(file, argv, environ);
}

int execle(const char *path, const char *arg, ...) {
    char **argv, **envp;
    ARGV_FROM_VA(arg, argv, envp = va_arg(ap_, char **));
    return execve(path, argv, envp);
}

/* In the program an exec started: the stack sockets the old image kept (see above). */
static void adopt_from_environment(void) {
    const char *value = getenv("SOCKET_OFFLOAD_EXEC");
    if (!value || !*value) return;
    char *list = strdup(value);
    unsetenv("SOCKET_OFFLOAD_EXEC"); /* (a later exec writes its own) */
    if (!list || !kinds || !client_ready()) { free(list); return; }
    enum { MAX = 4096 };
    static int first_fd[MAX];
    static uint32_t first_handle[MAX];
    int sockets = 0;
    char *save = NULL;
    for (char *item = strtok_r(list, ",", &save); item; item = strtok_r(NULL, ",", &save)) {
        int fd, nonblocking, memfd;
        unsigned int handle;
        if (sscanf(item, "%d/%u/%d/%d", &fd, &handle, &nonblocking, &memfd) != 4 || fd < 0 || fd >= table_size) continue;
        if (REAL(fcntl)(fd, F_GETFD) < 0) continue;
        int s = -1;
        for (int i = 0; i < sockets; i++) if (first_handle[i] == handle) s = first_fd[i];
        if (s >= 0) {
            mark(fd, ALIAS, s);
        } else if (sockets < MAX) {
            first_fd[sockets] = fd;
            first_handle[sockets++] = handle;
            mark(fd, SOCKET, fd);
            SKO_VOID(sko_adopt_after_exec, fd, handle, nonblocking, memfd);
        }
    }
    free(list);
}

/* ---------------------------------------------------------------- signals
 *
 * Whether a socket call interrupted by a handler restarts depends on that handler's SA_RESTART
 * (signal(7)). To know which signal interrupted a call, the handlers a program installs through
 * sigaction/signal run behind a trampoline that records the signal number in a thread-local
 * before calling the program's handler. sigaction reports the program's own handler back. The
 * synchronous signals (SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGTRAP, SIGABRT, SIGSYS) are left alone:
 * they interrupt no system call, and crash handlers stay as they were installed. */

static struct sigaction program_actions[NSIG]; /* the program's, for signals behind the trampoline */
static _Atomic int trampolined[NSIG];

static void trampoline(int sig, siginfo_t *info, void *context) {
    last_signal = sig;
    if (sig <= 0 || sig >= NSIG) return;
    struct sigaction *a = &program_actions[sig];
    if (a->sa_flags & SA_SIGINFO) {
        if (a->sa_sigaction) a->sa_sigaction(sig, info, context);
    } else if (a->sa_handler != SIG_DFL && a->sa_handler != SIG_IGN) {
        a->sa_handler(sig);
    }
}

/* 1: `sig`'s handler has SA_RESTART, 0: it has not, -1: not known (not installed through us). */
static int handler_restarts(int sig) {
    if (sig <= 0 || sig >= NSIG || !atomic_load(&trampolined[sig])) return -1;
    return (program_actions[sig].sa_flags & SA_RESTART) != 0;
}

static int synchronous(int sig) {
    return sig == SIGSEGV || sig == SIGBUS || sig == SIGILL || sig == SIGFPE || sig == SIGTRAP || sig == SIGABRT || sig == SIGSYS;
}

int sigaction(int sig, const struct sigaction *act, struct sigaction *old) {
    static int (*real)(int, const struct sigaction *, struct sigaction *);
    if (!real) real = (int (*)(int, const struct sigaction *, struct sigaction *))dlsym(RTLD_NEXT, "sigaction");
    if (sig <= 0 || sig >= NSIG || synchronous(sig)) return real(sig, act, old);
    struct sigaction current;
    if (real(sig, NULL, &current) != 0) return -1; /* (EINVAL for a bad or unchangeable signal) */
    int ours = (current.sa_flags & SA_SIGINFO) && current.sa_sigaction == trampoline;
    struct sigaction previous = ours ? program_actions[sig] : current;
    if (act) {
        int handled = (act->sa_flags & SA_SIGINFO) ? act->sa_sigaction != NULL
                                                    : (act->sa_handler != SIG_DFL && act->sa_handler != SIG_IGN);
        int rc;
        if (handled) {
            struct sigaction wrapped = *act;
            wrapped.sa_flags |= SA_SIGINFO;
            wrapped.sa_sigaction = trampoline;
            /* The program's action is in place before the trampoline can run with it. */
            sigset_t all, saved;
            sigfillset(&all);
            pthread_sigmask(SIG_BLOCK, &all, &saved);
            program_actions[sig] = *act;
            atomic_store(&trampolined[sig], 1);
            rc = real(sig, &wrapped, NULL);
            pthread_sigmask(SIG_SETMASK, &saved, NULL);
        } else {
            rc = real(sig, act, NULL);
            if (rc == 0) atomic_store(&trampolined[sig], 0);
        }
        if (rc != 0) return -1;
    }
    if (old) *old = previous;
    return 0;
}

/* glibc's signal() installs through its internal sigaction, out of our reach: through ours, with
 * the same BSD semantics (SA_RESTART, the handler stays). */
sighandler_t signal(int sig, sighandler_t handler) {
    struct sigaction act, old;
    memset(&act, 0, sizeof act);
    act.sa_handler = handler;
    sigemptyset(&act.sa_mask);
    if (sig > 0 && sig < NSIG) sigaddset(&act.sa_mask, sig);
    act.sa_flags = SA_RESTART;
    if (sigaction(sig, &act, &old) != 0) return SIG_ERR;
    return (old.sa_flags & SA_SIGINFO) ? (sighandler_t)(void *)old.sa_sigaction : old.sa_handler;
}

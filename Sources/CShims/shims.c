#include "CShims.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

// MARK: - Layout checks: both processes compile this header; these pin what they agree on.

_Static_assert(ATOMIC_LLONG_LOCK_FREE == 2, "64-bit atomics must be lock-free to work across processes");
_Static_assert(ATOMIC_INT_LOCK_FREE == 2, "32-bit atomics must be lock-free to work across processes");
_Static_assert(sizeof(_Atomic uint64_t) == 8, "atomic u64 must have plain layout");
_Static_assert(sizeof(_Atomic uint32_t) == 4, "atomic u32 must have plain layout");
_Static_assert(sizeof(cshims_address) == 28, "address layout");
_Static_assert(sizeof(cshims_notify_state) == 128, "notify state: two cache lines");
_Static_assert(offsetof(cshims_notify_state, acked) - offsetof(cshims_notify_state, posted) >= 64,
               "posted and acked on separate cache lines");
_Static_assert(sizeof(cshims_stream_ring) == 128, "stream ring header: two cache lines");
_Static_assert(offsetof(cshims_stream_ring, tail) - offsetof(cshims_stream_ring, head) >= 64,
               "producer and consumer indices on separate cache lines");
_Static_assert(offsetof(cshims_bipartite_ring, tail) - offsetof(cshims_bipartite_ring, head) >= 64,
               "producer and consumer indices on separate cache lines");
_Static_assert(sizeof(cshims_bipartite_ring) == 128, "bipartite ring header: two cache lines");
_Static_assert(sizeof(cshims_datagram_item) == 64, "one item per cache line");
_Static_assert(offsetof(cshims_channel_header, to_app) % 64 == 0, "to_app on its own line");
_Static_assert(offsetof(cshims_channel_header, to_stack) % 64 == 0, "to_stack on its own line");
_Static_assert(sizeof(cshims_channel_header) == 320, "channel header layout");
_Static_assert(sizeof(cshims_segment_header) == 64, "segment header layout");

// MARK: - memfd segments

int cshims_memfd_segment(const char *name, uint64_t size) {
    int fd = memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0) return -1;
    if (ftruncate(fd, (off_t)size) != 0) {
        int saved = errno;
        close(fd);
        errno = saved;
        return -1;
    }
    return fd;
}

int cshims_seal_size(int fd) {
    return fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL);
}

int cshims_has_size_seals(int fd) {
    int seals = fcntl(fd, F_GET_SEALS);
    if (seals < 0) return 0;
    return (seals & (F_SEAL_SHRINK | F_SEAL_GROW)) == (F_SEAL_SHRINK | F_SEAL_GROW);
}

// MARK: - eventfd

int cshims_eventfd(uint32_t initval) { return eventfd(initval, EFD_CLOEXEC | EFD_NONBLOCK); }

int cshims_eventfd_write(int fd, uint64_t value) {
    for (;;) {
        ssize_t n = write(fd, &value, sizeof value);
        if (n == (ssize_t)sizeof value) return 0;
        if (n < 0 && errno == EINTR) continue;
        return -1;
    }
}

int cshims_eventfd_read(int fd, uint64_t *value) {
    for (;;) {
        ssize_t n = read(fd, value, sizeof *value);
        if (n == (ssize_t)sizeof *value) return 0;
        if (n < 0 && errno == EINTR) continue;
        return -1;
    }
}

// MARK: - SCM_RIGHTS

ssize_t cshims_send_with_fds(int sock, const void *buf, size_t len, const int *fds, int nfds) {
    if (nfds < 0 || nfds > CSHIMS_MAX_FDS) {
        errno = EINVAL;
        return -1;
    }
    struct iovec iov = {.iov_base = (void *)buf, .iov_len = len};
    union {
        char buf[CMSG_SPACE(sizeof(int) * CSHIMS_MAX_FDS)];
        struct cmsghdr align;
    } control;
    memset(&control, 0, sizeof control);
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
    if (nfds > 0) {
        msg.msg_control = control.buf;
        msg.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)nfds);
        struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
        cmsg->cmsg_level = SOL_SOCKET;
        cmsg->cmsg_type = SCM_RIGHTS;
        cmsg->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
        memcpy(CMSG_DATA(cmsg), fds, sizeof(int) * (size_t)nfds);
    }
    for (;;) {
        ssize_t n = sendmsg(sock, &msg, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) continue;
        return n;
    }
}

ssize_t cshims_recv_with_fds(int sock, void *buf, size_t len, int flags, int *fds, int maxfds, int *nfds,
                             int *truncated) {
    *nfds = 0;
    *truncated = 0;
    struct iovec iov = {.iov_base = buf, .iov_len = len};
    union {
        char buf[CMSG_SPACE(sizeof(int) * CSHIMS_MAX_FDS)];
        struct cmsghdr align;
    } control;
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf,
                         .msg_controllen = sizeof control.buf};
    ssize_t n;
    for (;;) {
        n = recvmsg(sock, &msg, flags | MSG_CMSG_CLOEXEC);
        if (n < 0 && errno == EINTR) continue;
        break;
    }
    if (n < 0) return n;
    if (msg.msg_flags & MSG_TRUNC) *truncated |= CSHIMS_TRUNC_DATA;
    if (msg.msg_flags & MSG_CTRUNC) *truncated |= CSHIMS_TRUNC_CONTROL;
    for (struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg); cmsg != NULL; cmsg = CMSG_NXTHDR(&msg, cmsg)) {
        if (cmsg->cmsg_level != SOL_SOCKET || cmsg->cmsg_type != SCM_RIGHTS) continue;
        size_t count = (cmsg->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        int *received = (int *)CMSG_DATA(cmsg);
        for (size_t i = 0; i < count; i++) {
            int fd;
            memcpy(&fd, &received[i], sizeof fd);
            if (*nfds < maxfds) {
                fds[(*nfds)++] = fd;
            } else {
                close(fd); // more than the caller can take: never leak it
                *truncated |= CSHIMS_TRUNC_CONTROL;
            }
        }
    }
    return n;
}

int cshims_peer_credentials(int sock, pid_t *pid, uid_t *uid, gid_t *gid) {
    struct ucred cred;
    socklen_t len = sizeof cred;
    if (getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) return -1;
    *pid = cred.pid;
    *uid = cred.uid;
    *gid = cred.gid;
    return 0;
}

// MARK: - Cross-process memory

ssize_t cshims_process_vm_readv(pid_t pid, const struct iovec *local, unsigned long nlocal,
                                const struct iovec *remote, unsigned long nremote) {
    return process_vm_readv(pid, local, nlocal, remote, nremote, 0);
}

ssize_t cshims_process_vm_writev(pid_t pid, const struct iovec *local, unsigned long nlocal,
                                 const struct iovec *remote, unsigned long nremote) {
    return process_vm_writev(pid, local, nlocal, remote, nremote, 0);
}


int cshims_yama_ptrace_scope(void) {
    FILE *f = fopen("/proc/sys/kernel/yama/ptrace_scope", "re");
    if (f == NULL) return -1;
    int value = -1;
    if (fscanf(f, "%d", &value) != 1) value = -1;
    fclose(f);
    return value;
}

int cshims_pidfd_open(pid_t pid) {
#ifdef SYS_pidfd_open
    return (int)syscall(SYS_pidfd_open, pid, 0);
#else
    errno = ENOSYS;
    return -1;
#endif
}

pid_t cshims_parent_pid(pid_t pid) {
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return -1;
    buf[n] = 0;
    /* "pid (comm) state ppid ...": comm may hold spaces and parentheses; the last ')' ends it. */
    char *end = strrchr(buf, ')');
    int ppid = -1;
    char state;
    if (end == NULL || sscanf(end + 1, " %c %d", &state, &ppid) != 2) return -1;
    return (pid_t)ppid;
}

int cshims_ppoll(struct pollfd *fds, unsigned long nfds, int timeout_ms, const sigset_t *mask) {
    struct timespec t = {timeout_ms / 1000, (long)(timeout_ms % 1000) * 1000000L};
    return ppoll(fds, (nfds_t)nfds, timeout_ms < 0 ? NULL : &t, mask);
}

int cshims_memfd_text(const char *name, const void *data, size_t len) {
    int fd = memfd_create(name, MFD_CLOEXEC);
    if (fd < 0) return -1;
    const char *p = data;
    while (len > 0) {
        ssize_t w = write(fd, p, len);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            int e = errno;
            close(fd);
            errno = e ? e : EIO;
            return -1;
        }
        p += w;
        len -= (size_t)w;
    }
    lseek(fd, 0, SEEK_SET);
    return fd;
}

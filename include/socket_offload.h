/*
 * socket_offload.h — the SocketClient library's BSD-style calls, for C programs.
 *
 * Each function is shaped like the libc call of the same name without the "sko_" prefix: the same
 * arguments, flags and option constants (from <sys/socket.h>, <netinet/in.h>), returning -1 and
 * setting errno on failure. Descriptors returned by sko_socket/sko_accept are eventfds: poll,
 * select and epoll work on them (readable: data, EOF, error, or a connection to accept; writable:
 * room in the send ring). Close them with sko_close, never with close(2).
 *
 * The server is found at the path given to sko_configure, else $SOCKET_SERVER_PATH, else
 * $XDG_RUNTIME_DIR/socket-server.sock, else /tmp/socket-server-UID/socket. When the server is gone,
 * calls fail with ENETDOWN.
 *
 * Link: the dynamic library product SocketClientDynamic (libSocketClientDynamic.so), e.g.
 *   swift build -c release --product SocketClientDynamic
 *   cc app.c -Iinclude -L.build/release -lSocketClientDynamic -Wl,-rpath,.build/release
 */
#ifndef SOCKET_OFFLOAD_H
#define SOCKET_OFFLOAD_H

#include <poll.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

/* transport: 0 auto, 1 process-vm, 2 shared-memory. path NULL: the default. Before the first socket. */
int sko_configure(const char *path, int transport);

/* Sockets across fork (the preload library calls these from its fork and pthread_atfork hooks;
 * a program calling fork itself does the same to share its sockets with the child):
 * before fork, sko_before_fork() returns how many stack sockets the process holds; in the parent
 * after fork, sko_after_fork_in_parent(child) tells the server that the child holds them too; in
 * the child, sko_after_fork_in_child() keeps them usable (its first control request makes a session
 * of its own that attaches them). A socket closes when every process holding it has closed it or
 * exited. */
int sko_before_fork(void);
void sko_after_fork_in_parent(pid_t child);
void sko_after_fork_in_child(void);

/* Sockets across exec (the preload library calls these from its exec functions and, in the new
 * program, from its constructor): sko_before_exec takes the descriptors that survive the exec
 * (no FD_CLOEXEC) and the socket descriptor behind each, has the server hold those sockets for the
 * new program, and writes the SOCKET_OFFLOAD_EXEC=... environment entry that names them (returns
 * its length, 0 when nothing is kept). sko_after_failed_exec undoes it when the exec fails. In the
 * new program, sko_adopt_after_exec registers one socket descriptor of that entry (FD, HANDLE,
 * NONBLOCKING, MEMFD): the socket is adopted on first use. */
size_t sko_before_exec(const int *fds, const int *sockets, size_t count, char *entry, size_t size);
void sko_after_failed_exec(void);
void sko_adopt_after_exec(int fd, uint32_t handle, int nonblocking, int memfd);

/* The server path this process uses, into buf (NUL-terminated, truncated); returns its length. */
size_t sko_server_path(char *buf, size_t size);

int sko_socket(int domain, int type, int protocol);
int sko_bind(int fd, const struct sockaddr *addr, socklen_t len);
int sko_connect(int fd, const struct sockaddr *addr, socklen_t len);
int sko_listen(int fd, int backlog);
int sko_accept(int fd, struct sockaddr *addr, socklen_t *len);
int sko_accept4(int fd, struct sockaddr *addr, socklen_t *len, int flags);
ssize_t sko_send(int fd, const void *buf, size_t len, int flags);
ssize_t sko_sendto(int fd, const void *buf, size_t len, int flags, const struct sockaddr *addr, socklen_t alen);
ssize_t sko_sendmsg(int fd, const struct msghdr *msg, int flags);
ssize_t sko_write(int fd, const void *buf, size_t len);
ssize_t sko_recv(int fd, void *buf, size_t len, int flags);
ssize_t sko_recvfrom(int fd, void *buf, size_t len, int flags, struct sockaddr *addr, socklen_t *alen);
ssize_t sko_recvmsg(int fd, struct msghdr *msg, int flags);
ssize_t sko_read(int fd, void *buf, size_t len);
int sko_getsockname(int fd, struct sockaddr *addr, socklen_t *len);
int sko_getpeername(int fd, struct sockaddr *addr, socklen_t *len);
int sko_getsockopt(int fd, int level, int name, void *value, socklen_t *len);
int sko_setsockopt(int fd, int level, int name, const void *value, socklen_t len);
int sko_ioctl(int fd, unsigned long request, int *arg);   /* FIONREAD, FIONBIO */
int sko_fcntl(int fd, int cmd, int arg);                   /* F_GETFL, F_SETFL (O_NONBLOCK), F_GETFD */
int sko_shutdown(int fd, int how);
/* poll(2) with kernel-accurate readiness for the library's sockets (POLLIN only while something is
 * to read, POLLHUP/POLLERR/POLLRDHUP after reset, close or FIN, no POLLIN while the send ring is
 * full); other descriptors in fds are polled as usual. */
int sko_poll(struct pollfd *fds, unsigned long nfds, int timeout);
/* sko_poll whose sleep applies `mask` atomically, as ppoll does (NULL: the thread's own). */
int sko_ppoll(struct pollfd *fds, unsigned long nfds, int timeout, const sigset_t *mask);
int sko_close(int fd);

#ifdef __cplusplus
}
#endif
#endif

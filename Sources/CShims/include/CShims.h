// CShims: the pieces of the data path that Swift cannot express well.
//
// 1. The layout of every structure shared between the server and a client, defined once here with
//    `_Atomic` fields. Swift never sees those fields: it reaches them only through the `static inline`
//    accessors below, each of which states its memory order. Sizes and offsets are exported as
//    constants and checked with `_Static_assert` in shims.c.
// 2. Thin syscall wrappers: memfd + seals, SCM_RIGHTS over SOCK_SEQPACKET, eventfd,
//    process_vm_readv/writev, prctl, SO_PEERCRED.
//
// Every symbol carries the `cshims_` / `CSHIMS_` prefix.
#ifndef CSHIMS_H
#define CSHIMS_H

#include <poll.h>
#include <signal.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

#define CSHIMS_CACHE_LINE 64

// MARK: - Shared layout

/// Socket address as carried in shared memory and in control messages (28 bytes, host byte order for
/// `port`, network byte order for `addr`). family is AF_INET (addr[0..4]) or AF_INET6, or 0 for none.
typedef struct cshims_address {
    uint16_t family;
    uint16_t port;
    uint32_t flowinfo;
    uint8_t addr[16];
    uint32_t scope_id;
} cshims_address;

/// One direction of notification: the producer counts the eventfd signals it has sent (`posted`), the
/// consumer records the value of `posted` it has taken in (`acked`). While posted != acked the consumer
/// is known to have a signal pending, so the producer skips the eventfd write.
typedef struct cshims_notify_state {
    _Alignas(CSHIMS_CACHE_LINE) _Atomic uint64_t posted;
    _Alignas(CSHIMS_CACHE_LINE) _Atomic uint64_t acked;
} cshims_notify_state;

/// Header of a single-producer single-consumer byte ring. Indices run modulo 2 x capacity so that a
/// full ring (head - tail == capacity) and an empty one (head == tail) differ without a spare byte.
/// The data area and the capacity are not here: each side knows them from private, trusted state.
typedef struct cshims_stream_ring {
    _Alignas(CSHIMS_CACHE_LINE) _Atomic uint32_t head; // producer
    _Alignas(CSHIMS_CACHE_LINE) _Atomic uint32_t tail; // consumer
} cshims_stream_ring;

/// Header of a bipartite descriptor ring. The producer publishes items (head), the consumer takes
/// each, uses it and hands it back (tail), the producer reclaims spent items (its private index,
/// mirrored in `reclaimed` for diagnostics). Indices run modulo 2 x item count.
typedef struct cshims_bipartite_ring {
    _Alignas(CSHIMS_CACHE_LINE) _Atomic uint32_t head; // producer
    _Atomic uint32_t reclaimed;                        // producer
    _Atomic uint64_t drops;                            // producer: datagrams dropped for want of room
    _Alignas(CSHIMS_CACHE_LINE) _Atomic uint32_t tail; // consumer
} cshims_bipartite_ring;

/// Item of a bipartite ring: one payload buffer. A datagram larger than one buffer occupies several
/// consecutive items; all but the last carry CSHIMS_ITEM_MORE, and the first carries the datagram's
/// total length, item count and peer address.
typedef struct cshims_datagram_item {
    uint64_t payload;  // segment offset (shared-memory transport) or server address (process-vm)
    uint32_t capacity; // bytes available at payload
    uint32_t length;   // bytes used in this item
    uint32_t total;    // whole datagram length (first item)
    uint16_t flags;    // CSHIMS_ITEM_*
    uint16_t count;    // items in this datagram (first item)
    cshims_address address;
    uint8_t reserved[12];
} cshims_datagram_item;

#define CSHIMS_ITEM_MORE 0x1u   // the datagram continues in the next item
#define CSHIMS_ITEM_FIRST 0x2u  // first item of a datagram

/// Per-socket channel header: readiness state and both notification directions.
typedef struct cshims_channel_header {
    _Alignas(CSHIMS_CACHE_LINE) _Atomic uint32_t events; // CSHIMS_EV_* set by the stack
    _Atomic int32_t error;                               // pending socket error (errno), read by SO_ERROR
    _Atomic uint32_t blocked;                            // app made its fd unwritable (see Notifier)
    _Atomic uint32_t pending_accepts;                    // listener: connections ready to accept
    _Atomic uint32_t stack_wants;                        // CSHIMS_WANTS_* set by the stack, cleared by the app
    _Atomic uint32_t send_wanted;                        // datagram: send buffers the app waits for (a hint, clamped)
    cshims_notify_state to_app;                          // stack -> app
    cshims_notify_state to_stack;                        // app -> stack
} cshims_channel_header;

#define CSHIMS_EV_READ_EOF    0x01u // no more data will arrive (FIN or SHUT_RD)
#define CSHIMS_EV_ERROR       0x02u // `error` holds a pending error
#define CSHIMS_EV_RESET       0x04u // connection reset
#define CSHIMS_EV_HUP         0x08u // both directions closed
#define CSHIMS_EV_CONNECTED   0x10u // connect completed
#define CSHIMS_EV_WRITE_SHUT  0x20u // the stack will accept no more data to send
#define CSHIMS_EV_CLOSED      0x40u // the stack has released the socket
#define CSHIMS_EV_NOBUFS      0x80u // datagram: the stack cannot give the send buffers asked for (memory limit)

#define CSHIMS_WANTS_RX_PROGRESS 0x01u // stack: tell me (notify to_stack) when you consume receive data

/// Header at offset 0 of every client segment.
typedef struct cshims_segment_header {
    uint32_t magic;    // CSHIMS_SEGMENT_MAGIC
    uint32_t version;  // CSHIMS_LAYOUT_VERSION
    uint64_t size;     // bytes in the segment
    uint32_t server_pid;
    uint32_t reserved[11];
} cshims_segment_header;

#define CSHIMS_SEGMENT_MAGIC 0x534f4b53u // "SKOS"
#define CSHIMS_LAYOUT_VERSION 2u

enum {
    CSHIMS_ADDRESS_SIZE = sizeof(cshims_address),
    CSHIMS_NOTIFY_STATE_SIZE = sizeof(cshims_notify_state),
    CSHIMS_NOTIFY_POSTED = offsetof(cshims_notify_state, posted),
    CSHIMS_NOTIFY_ACKED = offsetof(cshims_notify_state, acked),
    CSHIMS_STREAM_RING_SIZE = sizeof(cshims_stream_ring),
    CSHIMS_STREAM_RING_HEAD = offsetof(cshims_stream_ring, head),
    CSHIMS_STREAM_RING_TAIL = offsetof(cshims_stream_ring, tail),
    CSHIMS_BIPARTITE_RING_SIZE = sizeof(cshims_bipartite_ring),
    CSHIMS_BIPARTITE_HEAD = offsetof(cshims_bipartite_ring, head),
    CSHIMS_BIPARTITE_RECLAIMED = offsetof(cshims_bipartite_ring, reclaimed),
    CSHIMS_BIPARTITE_DROPS = offsetof(cshims_bipartite_ring, drops),
    CSHIMS_BIPARTITE_TAIL = offsetof(cshims_bipartite_ring, tail),
    CSHIMS_DATAGRAM_ITEM_SIZE = sizeof(cshims_datagram_item),
    CSHIMS_CHANNEL_HEADER_SIZE = sizeof(cshims_channel_header),
    CSHIMS_CHANNEL_EVENTS = offsetof(cshims_channel_header, events),
    CSHIMS_CHANNEL_ERROR = offsetof(cshims_channel_header, error),
    CSHIMS_CHANNEL_BLOCKED = offsetof(cshims_channel_header, blocked),
    CSHIMS_CHANNEL_PENDING_ACCEPTS = offsetof(cshims_channel_header, pending_accepts),
    CSHIMS_CHANNEL_STACK_WANTS = offsetof(cshims_channel_header, stack_wants),
    CSHIMS_CHANNEL_SEND_WANTED = offsetof(cshims_channel_header, send_wanted),
    CSHIMS_CHANNEL_TO_APP = offsetof(cshims_channel_header, to_app),
    CSHIMS_CHANNEL_TO_STACK = offsetof(cshims_channel_header, to_stack),
    CSHIMS_SEGMENT_HEADER_SIZE = sizeof(cshims_segment_header),
};

// MARK: - Atomic accessors over shared memory
// `p` points at an `_Atomic` field inside a mapped segment (base + one of the offsets above).

static inline uint32_t cshims_load_acquire_u32(const void *p) {
    return atomic_load_explicit((_Atomic uint32_t *)p, memory_order_acquire);
}
static inline void cshims_store_release_u32(void *p, uint32_t v) {
    atomic_store_explicit((_Atomic uint32_t *)p, v, memory_order_release);
}
static inline uint32_t cshims_load_relaxed_u32(const void *p) {
    return atomic_load_explicit((_Atomic uint32_t *)p, memory_order_relaxed);
}
static inline uint32_t cshims_fetch_or_u32(void *p, uint32_t bits) {
    return atomic_fetch_or_explicit((_Atomic uint32_t *)p, bits, memory_order_acq_rel);
}
static inline uint32_t cshims_fetch_and_u32(void *p, uint32_t bits) {
    return atomic_fetch_and_explicit((_Atomic uint32_t *)p, bits, memory_order_acq_rel);
}
static inline uint32_t cshims_fetch_add_u32(void *p, uint32_t v) {
    return atomic_fetch_add_explicit((_Atomic uint32_t *)p, v, memory_order_acq_rel);
}
static inline uint32_t cshims_fetch_sub_u32(void *p, uint32_t v) {
    return atomic_fetch_sub_explicit((_Atomic uint32_t *)p, v, memory_order_acq_rel);
}
/// Sequentially consistent compare-and-swap; true when `p` held `expected` and now holds `desired`.
static inline _Bool cshims_cas_u32(void *p, uint32_t expected, uint32_t desired) {
    return atomic_compare_exchange_strong((_Atomic uint32_t *)p, &expected, desired);
}
static inline int32_t cshims_load_acquire_i32(const void *p) {
    return atomic_load_explicit((_Atomic int32_t *)p, memory_order_acquire);
}
static inline void cshims_store_release_i32(void *p, int32_t v) {
    atomic_store_explicit((_Atomic int32_t *)p, v, memory_order_release);
}
static inline uint64_t cshims_load_acquire_u64(const void *p) {
    return atomic_load_explicit((_Atomic uint64_t *)p, memory_order_acquire);
}
static inline void cshims_store_release_u64(void *p, uint64_t v) {
    atomic_store_explicit((_Atomic uint64_t *)p, v, memory_order_release);
}
static inline uint64_t cshims_fetch_add_u64(void *p, uint64_t v) {
    return atomic_fetch_add_explicit((_Atomic uint64_t *)p, v, memory_order_relaxed);
}
static inline uint64_t cshims_load_seq_cst_u64(const void *p) {
    return atomic_load_explicit((_Atomic uint64_t *)p, memory_order_seq_cst);
}
static inline void cshims_store_seq_cst_u64(void *p, uint64_t v) {
    atomic_store_explicit((_Atomic uint64_t *)p, v, memory_order_seq_cst);
}
static inline _Bool cshims_cas_u64(void *p, uint64_t expected, uint64_t desired) {
    return atomic_compare_exchange_strong((_Atomic uint64_t *)p, &expected, desired);
}
/// Full fence: orders a publish (store) before a later check of the peer's state (load).
static inline void cshims_fence_seq_cst(void) {
    atomic_thread_fence(memory_order_seq_cst);
}

// MARK: - Syscalls
// All return -1 and set errno on failure, like the calls they wrap.

/// memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING) + ftruncate(size).
int cshims_memfd_segment(const char *name, uint64_t size);
/// Adds F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL: the size can no longer change.
int cshims_seal_size(int fd);
int cshims_has_size_seals(int fd);

/// eventfd(initval, EFD_CLOEXEC | EFD_NONBLOCK).
int cshims_eventfd(uint32_t initval);
/// Adds `value` to the eventfd counter; 0 on success, -1 (EAGAIN when it would overflow).
int cshims_eventfd_write(int fd, uint64_t value);
/// Reads and zeroes the counter into *value; 0 on success, -1 with EAGAIN when it was 0.
int cshims_eventfd_read(int fd, uint64_t *value);

/// sendmsg with MSG_NOSIGNAL, one data buffer and up to CSHIMS_MAX_FDS descriptors via SCM_RIGHTS.
/// Returns bytes sent or -1.
ssize_t cshims_send_with_fds(int sock, const void *buf, size_t len, const int *fds, int nfds);
/// recvmsg with MSG_CMSG_CLOEXEC. Stores received descriptors in fds (at most maxfds) and their number
/// in *nfds; *truncated gets CSHIMS_TRUNC_DATA and/or CSHIMS_TRUNC_CONTROL. Descriptors that did not
/// fit are closed here (never leaked). Returns bytes received (0 = peer closed) or -1.
ssize_t cshims_recv_with_fds(int sock, void *buf, size_t len, int flags, int *fds, int maxfds, int *nfds,
                             int *truncated);
#define CSHIMS_MAX_FDS 8
#define CSHIMS_TRUNC_DATA 1
#define CSHIMS_TRUNC_CONTROL 2

/// SO_PEERCRED of a connected Unix socket.
int cshims_peer_credentials(int sock, pid_t *pid, uid_t *uid, gid_t *gid);

ssize_t cshims_process_vm_readv(pid_t pid, const struct iovec *local, unsigned long nlocal,
                                const struct iovec *remote, unsigned long nremote);
ssize_t cshims_process_vm_writev(pid_t pid, const struct iovec *local, unsigned long nlocal,
                                 const struct iovec *remote, unsigned long nremote);
/// Value of /proc/sys/kernel/yama/ptrace_scope, or -1 when Yama is absent.
int cshims_yama_ptrace_scope(void);

/// A pidfd for `pid` (pidfd_open(2), close-on-exec): readable once the process has exited.
/// Returns -1 with errno (ESRCH: no such process) on failure.
int cshims_pidfd_open(pid_t pid);

/// ppoll(2) with a timeout in milliseconds (-1: none) and an optional signal mask (NULL: the
/// thread's own), so the mask applies atomically during the wait.
int cshims_ppoll(struct pollfd *fds, unsigned long nfds, int timeout_ms, const sigset_t *mask);

/// A memfd (close-on-exec) holding `len` bytes of `data`, its offset back at 0. -1 with errno.
int cshims_memfd_text(const char *name, const void *data, size_t len);

/// The parent of `pid` as /proc/PID/stat gives it, or -1 when the process is gone.
pid_t cshims_parent_pid(pid_t pid);

// MARK: - Test patterns (used by tests, examples and the benchmark to verify payloads fast)

/// Fills `len` bytes with the deterministic pattern of a stream at byte position `position` under
/// `seed`: the same (seed, position) always gives the same byte, so a receiver can verify any
/// chunk of a stream without having seen the rest.
void cshims_fill_pattern(void *buf, size_t len, uint64_t seed, uint64_t position);
/// Offset of the first byte that differs from the pattern, or `len` when all match.
size_t cshims_check_pattern(const void *buf, size_t len, uint64_t seed, uint64_t position);
/// FNV-1a 64 over `len` bytes, continuing from `hash` (start with CSHIMS_FNV_OFFSET).
uint64_t cshims_fnv1a(const void *buf, size_t len, uint64_t hash);
#define CSHIMS_FNV_OFFSET 0xcbf29ce484222325ull

#endif

// CStack: the C side of the server's lwIP glue — what Swift cannot reach in lwIP's headers (macros,
// the netif init callback, ip_addr_t unions) plus libnuma placement. Server only.
#ifndef CSTACK_H
#define CSTACK_H

#include <stddef.h>
#include <stdint.h>
#include <lwip/opt.h>
#include <lwip/err.h>
#include <lwip/ip_addr.h>
#include <lwip/netif.h>
#include <lwip/pbuf.h>
#include <lwip/tcp.h>
#include <lwip/udp.h>
#include <sys/epoll.h>
#include <sys/types.h>

// MARK: lifecycle and the core lock

/// tcpip_init, waiting until the tcpip thread runs. Call once.
void cstack_start(void);
/// The core lock (LOCK_TCPIP_CORE): every raw-API call from our threads is made under it, and lwIP
/// callbacks run on whichever thread holds it.
void cstack_lock(void);
void cstack_unlock(void);

// MARK: addresses (family: 4 or 6; bytes in network order)

void cstack_ip_set(ip_addr_t *out, int family, const uint8_t *bytes, uint32_t zone);
/// Returns 4 or 6 and fills bytes[0..4) or bytes[0..16); 0 for an unknown type.
int cstack_ip_get(const ip_addr_t *ip, uint8_t *bytes);
void cstack_ip_set_any(ip_addr_t *out, int family);
/// An interface's IPv4 address, netmask and gateway from network-order bytes (NULL: 0.0.0.0).
void cstack_ip4_triple(ip4_addr_t *ip, ip4_addr_t *mask, ip4_addr_t *gw, const uint8_t *ip4, const uint8_t *mask4,
                       const uint8_t *gw4);

// MARK: loopback netifs

/// Adds a loopback interface: packets it sends come back in through netif_loop_output. The first
/// one added becomes the default. ip4 may be NULL (IPv6 only).
/// Returns NULL on failure.
struct netif *cstack_loopback_add(const uint8_t *ip4, const uint8_t *mask4, uint16_t mtu);
/// Adds an IPv6 address in the preferred state; returns the index or -1 when the netif is full.
int cstack_netif_add_ip6(struct netif *netif, const uint8_t *ip6);
/// True when `ip` is an address of one of the stack's interfaces (what bind may use).
int cstack_is_local_address(const ip_addr_t *ip);
/// Delivers every packet queued for the stack's own addresses, on the calling thread (core lock held).
void cstack_loopback_poll_all(void);
/// An eventfd that becomes readable when packets were looped outside a batch of our stack thread
/// (by lwIP's tcpip thread: timers); the server's event loop watches it and drains the queue.
int cstack_loopback_eventfd(void);
/// Marks the calling thread as inside a batch that ends with cstack_loopback_poll_all (no eventfd
/// wake-up needed for packets it loops).
void cstack_batch_begin(void);
void cstack_batch_end(void);

// MARK: pbuf and pcb fields behind macros

static inline uint16_t cstack_pbuf_len(const struct pbuf *p) { return p->len; }
static inline uint16_t cstack_pbuf_tot_len(const struct pbuf *p) { return p->tot_len; }
static inline void *cstack_pbuf_payload(const struct pbuf *p) { return p->payload; }
static inline struct pbuf *cstack_pbuf_next(const struct pbuf *p) { return p->next; }

static inline uint16_t cstack_udp_local_port(const struct udp_pcb *pcb) { return pcb->local_port; }
static inline uint16_t cstack_udp_remote_port(const struct udp_pcb *pcb) { return pcb->remote_port; }
static inline const ip_addr_t *cstack_udp_local_ip(const struct udp_pcb *pcb) { return &pcb->local_ip; }
static inline const ip_addr_t *cstack_udp_remote_ip(const struct udp_pcb *pcb) { return &pcb->remote_ip; }
static inline void cstack_udp_set_local_ip(struct udp_pcb *pcb, const ip_addr_t *ip) { ip_addr_copy(pcb->local_ip, *ip); }
static inline int cstack_udp_is_connected(const struct udp_pcb *pcb) { return (pcb->flags & UDP_FLAGS_CONNECTED) != 0; }
static inline void cstack_pcb_set_option(struct udp_pcb *pcb, uint8_t opt, int on) {
    if (on) ip_set_option(pcb, opt); else ip_reset_option(pcb, opt);
}
static inline int cstack_pcb_get_option(const struct udp_pcb *pcb, uint8_t opt) { return ip_get_option(pcb, opt) != 0; }
// IP_PCB fields, common to every pcb (udp, tcp and tcp listen pcbs all start with IP_PCB: the
// listen pcb is the smallest of them, so it is the view used here).
static inline uint8_t cstack_ip_pcb_ttl(const void *pcb) { return ((const struct tcp_pcb_listen *)pcb)->ttl; }
static inline void cstack_ip_pcb_set_ttl(void *pcb, uint8_t ttl) { ((struct tcp_pcb_listen *)pcb)->ttl = ttl; }
static inline void cstack_ip_pcb_set_tos(void *pcb, uint8_t tos) { ((struct tcp_pcb_listen *)pcb)->tos = tos; }
/// Makes an unbound pcb of an AF_INET6 socket dual-stack (IPADDR_TYPE_ANY: IPv4 traffic too, for
/// v4-mapped addresses) or IPv6-only. Only its wildcard addresses change type.
static inline void cstack_ip_pcb_set_dual_stack(void *pcb, int dual) {
    struct tcp_pcb_listen *p = (struct tcp_pcb_listen *)pcb;
    u8_t type = dual ? IPADDR_TYPE_ANY : IPADDR_TYPE_V6;
    if (ip_addr_isany(&p->local_ip)) { ip_addr_copy(p->local_ip, *IP6_ADDR_ANY); IP_SET_TYPE_VAL(p->local_ip, type); }
    if (ip_addr_isany(&p->remote_ip)) { ip_addr_copy(p->remote_ip, *IP6_ADDR_ANY); IP_SET_TYPE_VAL(p->remote_ip, type); }
}

static inline uint16_t cstack_tcp_local_port(const struct tcp_pcb *pcb) { return pcb->local_port; }
static inline uint16_t cstack_tcp_remote_port(const struct tcp_pcb *pcb) { return pcb->remote_port; }
static inline const ip_addr_t *cstack_tcp_local_ip(const struct tcp_pcb *pcb) { return &pcb->local_ip; }
static inline const ip_addr_t *cstack_tcp_remote_ip(const struct tcp_pcb *pcb) { return &pcb->remote_ip; }
static inline int cstack_tcp_state(const struct tcp_pcb *pcb) { return (int)pcb->state; }
static inline uint32_t cstack_tcp_sndbuf(const struct tcp_pcb *pcb) { return tcp_sndbuf(pcb); }
/// Bytes lwIP holds for sending (queued or unacknowledged) on a connected pcb.
static inline uint32_t cstack_tcp_bytes_held(const struct tcp_pcb *pcb) {
    return pcb && pcb->state != LISTEN && pcb->state != CLOSED ? (uint32_t)(TCP_SND_BUF - tcp_sndbuf(pcb)) : 0;
}
static inline uint32_t cstack_tcp_sndqueuelen(const struct tcp_pcb *pcb) { return tcp_sndqueuelen(pcb); }
static inline uint32_t cstack_tcp_sndqueuelen_max(void) { return TCP_SND_QUEUELEN; }
static inline uint32_t cstack_tcp_window(void) { return TCP_WND; }
static inline uint16_t cstack_tcp_mss(const struct tcp_pcb *pcb) { return tcp_mss(pcb); }
/// Raises the segment size of a connection whose both ends are the stack's own addresses (packets
/// never leave the process, so the 1460-byte TCP_MSS compiled into Debian's lwIP is not a limit
/// there). Returns the MSS in force.
uint16_t cstack_tcp_raise_local_mss(struct tcp_pcb *pcb, uint16_t mss);
/// Sends an ACK with the next output (quick ACK), as Linux does on loopback.
static inline void cstack_tcp_ack_now(struct tcp_pcb *pcb) { tcp_set_flags(pcb, TF_ACK_NOW); }
static inline void cstack_tcp_set_nodelay(struct tcp_pcb *pcb, int on) {
    if (on) tcp_nagle_disable(pcb); else tcp_nagle_enable(pcb);
}
static inline int cstack_tcp_nodelay(const struct tcp_pcb *pcb) { return tcp_nagle_disabled(pcb) != 0; }
static inline void cstack_tcp_set_option(struct tcp_pcb *pcb, uint8_t opt, int on) {
    if (on) ip_set_option(pcb, opt); else ip_reset_option(pcb, opt);
}
static inline int cstack_tcp_get_option(const struct tcp_pcb *pcb, uint8_t opt) { return ip_get_option(pcb, opt) != 0; }
static inline uint32_t cstack_tcp_keep_idle(const struct tcp_pcb *pcb) { return pcb->keep_idle; }
static inline void cstack_tcp_set_keep_idle(struct tcp_pcb *pcb, uint32_t ms) { pcb->keep_idle = ms; }
static inline uint32_t cstack_tcp_keep_intvl(const struct tcp_pcb *pcb) { return pcb->keep_intvl; }
static inline void cstack_tcp_set_keep_intvl(struct tcp_pcb *pcb, uint32_t ms) { pcb->keep_intvl = ms; }
static inline uint32_t cstack_tcp_keep_cnt(const struct tcp_pcb *pcb) { return pcb->keep_cnt; }
static inline void cstack_tcp_set_keep_cnt(struct tcp_pcb *pcb, uint32_t n) { pcb->keep_cnt = n; }
/// Fills a Linux `struct tcp_info` (up to len bytes) with what lwIP knows; returns bytes written.
/// pcb NULL (the connection is gone) reports CLOSE; a listener reports LISTEN and nothing else.
size_t cstack_tcp_info(const struct tcp_pcb *pcb, void *out, size_t len);
/// 1 when a listening pcb has `port` on `ip` (or either is the wildcard): a bind there must fail
/// with EADDRINUSE even with SO_REUSEADDR, as on Linux.
int cstack_tcp_port_listening(const ip_addr_t *ip, uint16_t port);
/// 1 when a connection in TIME_WAIT without SO_REUSEADDR holds `port` on `ip`: Linux refuses a
/// bind there unless both sockets have SO_REUSEADDR (lwIP skips TIME_WAIT once the new one has it).
int cstack_tcp_port_in_time_wait(const ip_addr_t *ip, uint16_t port);
/// pidfd_open(pid, 0): a descriptor that polls readable once the process has exited; -1 and errno.
int cstack_pidfd_open(int pid);
/// For a connection between two of the stack's own addresses: the callback argument of the other
/// end's pcb (the connecting side, seen from an accepted pcb), or NULL when it is not local.
void *cstack_tcp_local_peer_arg(const struct tcp_pcb *pcb);
/// tcp_listen_with_backlog_and_err; on success the original pcb is freed and the listener returned.
struct tcp_pcb *cstack_tcp_listen(struct tcp_pcb *pcb, uint8_t backlog, err_t *err);

/// A send buffer of `size` bytes with room for the UDP/IP/link headers in front (PBUF_TRANSPORT,
/// PBUF_RAM): a single pbuf for any size up to 65535.
struct pbuf *cstack_pbuf_alloc_transport(uint16_t size);
/// Shrinks a single pbuf to `len` bytes (len <= its size).
void cstack_pbuf_set_length(struct pbuf *p, uint16_t len);

// MARK: UDP semantics (udp.c)

/// Gives a connected pcb bound to the wildcard address the source address its datagrams leave
/// from (the route's interface address, as udp_sendto_if picks it), as Linux's connect sets the
/// socket's source address: getsockname shows it, and only datagrams to it are received.
void cstack_udp_take_source_address(struct udp_pcb *pcb);
/// Takes the pcb off lwIP's list and clears its port: unbound, as a fresh pcb (the next send or
/// connect binds it to an ephemeral port again).
void cstack_udp_unbind(struct udp_pcb *pcb);
/// 1 when `ip` is an IPv4 broadcast address: 255.255.255.255 or the directed broadcast of an
/// interface that has broadcast (Linux's RTCF_BROADCAST routes).
int cstack_ip_is_broadcast(const ip_addr_t *ip);
/// Watches the ICMP and ICMPv6 port unreachable messages the stack receives (from a TAP peer, or
/// lwIP's own answer to a datagram sent to one of our addresses where no pcb is bound) and calls
/// `handler` with the receive argument of the connected pcb (with receive callback `recv`) that
/// sent the refused datagram. Once; later calls do nothing. Returns -1 when lwIP is out of pcbs.
int cstack_udp_report_refusals(udp_recv_fn recv, void (*handler)(void *arg));

// MARK: syscalls behind _GNU_SOURCE

/// accept4(fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK).
int cstack_accept(int fd);
/// A non-blocking signalfd for SIGINT, SIGTERM and SIGHUP (block them first).
int cstack_termination_signalfd(void);
/// Reads one signal from the signalfd: its number, 0 when none is pending, -1 on error.
int cstack_read_signal(int fd);

// MARK: TAP interfaces

/// Opens (creating if needed) the TAP device `name` ("" lets the kernel choose), non-blocking, no
/// packet info; writes the device's name into `actual`. Returns the fd or -1 (errno set).
int cstack_tap_open(const char *name, char *actual, size_t actual_len);
/// Adds an Ethernet netif over the TAP fd (ARP, IPv6 link-local + ND). ip4/mask4/gw4 may be NULL.
struct netif *cstack_tap_add(int fd, const uint8_t *mac, uint16_t mtu, const uint8_t *ip4, const uint8_t *mask4,
                             const uint8_t *gw4, int capture_id);
/// Reads up to `max_frames` frames from the TAP and hands them to lwIP (call under the core lock).
int cstack_tap_input(struct netif *netif, int max_frames);
void cstack_set_default_netif(struct netif *netif);

// MARK: counters (counters.c; core lock held)

struct cstack_interface_counters {
    uint64_t rx_packets, rx_bytes, rx_drops, tx_packets, tx_bytes, tx_drops;
};
struct cstack_protocol_counters {
    uint64_t ip_in, ip_out, ip6_in, ip6_out, icmp_in, icmp_out, icmp6_in, icmp6_out;
    uint64_t udp_in, udp_out, tcp_in, tcp_out, tcp_syn_in, tcp_syn_out, tcp_rst_in, tcp_rst_out;
    uint64_t tcp_fin_in, tcp_fin_out, arp_in, arp_out, other_in, other_out;
};
/// Counts one packet on `netif` (NULL: protocol counters only): an IP packet at `offset` in p (0,
/// or 14 after an Ethernet header).
void cstack_count_packet(const struct netif *netif, const struct pbuf *p, uint16_t offset, int outgoing);
/// Counts a packet `netif` could not send or take in.
void cstack_count_drop(const struct netif *netif, int outgoing);
const struct cstack_interface_counters *cstack_interface_counters(uint8_t num);
const struct cstack_protocol_counters *cstack_protocol_counters(void);

/// What socket-stat shows of one lwIP interface.
struct cstack_netif_info {
    uint8_t num, hwaddr_len, up, link_up, is_default, ip6_count;
    char name[2];
    uint16_t mtu;
    uint8_t hwaddr[6];
    uint8_t ip4[4], mask4[4], gw4[4];
    uint8_t ip6[8][16];
};
/// The index-th interface in lwIP's list: 1 when there is one (filled in), else 0.
int cstack_netif_info(int index, struct cstack_netif_info *out);

// MARK: live captures and the flight recorder (observe.c; core lock held)

/// Whether any capture or the recorder wants packets (cheap: checked for every packet).
int cstack_observing(void);
/// Shows one packet to the captures and the recorder (`synthetic_ethernet`: an IP packet).
void cstack_observe_packet(const struct netif *netif, const struct pbuf *p, int synthetic_ethernet);
/// Starts a live capture writing pcapng to `fd` (SOCK_SEQPACKET; taken over: closed when the capture
/// ends) of packets on netif `netif_num` (-1: all) matching `filter` (tcpdump's language; "" or NULL:
/// all), `count` of them (0: no limit). Returns its id, or -1 with errno and libpcap's message in err.
int cstack_capture_start(int fd, int netif_num, const char *filter, uint64_t count, char *err, size_t errlen);
/// Ends a capture (its socket is closed: the reader sees the end).
void cstack_capture_stop(int id);
int cstack_capture_is_active(int id);
/// Packets a capture lost because its reader fell behind.
uint64_t cstack_capture_dropped(int id);
/// Keeps the most recent `size` bytes of packets from now on.
int cstack_recorder_start(size_t size);
/// Writes the recorded packets on `netif_num` (-1: all) that match `filter`, as pcapng, to `fd`.
int cstack_recorder_dump(int fd, int netif_num, const char *filter, uint64_t *packets, char *err, size_t errlen);
void cstack_recorder_stats(uint64_t *packets, uint64_t *overwritten, uint64_t *held, size_t *size);

// MARK: capture (pcapng)

int cstack_capture_open(const char *path);
/// Describes an interface (LINKTYPE_ETHERNET 1 for all, so tcpdump reads the file); returns its id.
int cstack_capture_interface(uint16_t linktype);
/// Records an Ethernet frame.
void cstack_capture_packet(int interface_id, const struct pbuf *p);
/// Records an IP packet behind a synthetic Ethernet header (zero MACs).
void cstack_capture_ip_packet(int interface_id, const struct pbuf *p);
void cstack_capture_close(void);
/// The capture id used for packets on the loopback interfaces (-1: not captured).
void cstack_loopback_set_capture(int interface_id);

// MARK: libnuma

/// NUMA node of the calling thread's CPU, or -1 when libnuma reports no NUMA support.
int cstack_numa_node_of_current_cpu(void);
/// Binds [addr, addr+len) to `node` (numa_tonode_memory); 0 on success, -1 when NUMA is unavailable.
int cstack_numa_bind(void *addr, size_t len, int node);
/// Pins the calling thread to `cpu`; 0 on success, an errno value otherwise.
int cstack_pin_to_cpu(int cpu);

// MARK: admission (descriptor budget, timers, socket file access)

/// Raises the soft RLIMIT_NOFILE to the hard limit (capped by /proc/sys/fs/nr_open when the hard
/// limit is unlimited). Stores the soft limits before and after; returns 0 or an errno value.
int cstack_raise_descriptor_limit(long *before, long *after);
/// Descriptors this process has open (counted in /proc/self/fd), or -1.
int cstack_count_open_descriptors(void);
/// A non-blocking CLOCK_MONOTONIC timerfd, or -1 (errno set).
int cstack_timerfd(void);
/// Arms `fd` to fire once at `deadline` (CLOCK_MONOTONIC nanoseconds); 0 disarms. 0 or -1 (errno set).
int cstack_timerfd_arm(int fd, uint64_t deadline);
/// Consumes a timerfd's expirations (non-blocking).
void cstack_timerfd_clear(int fd);
/// Writes the POSIX access ACL of `path`: the owner gets `owner_perm`, each of `uids` gets
/// `user_perm` (bits 4 read, 2 write, 1 search/execute), the owning group and others nothing.
/// `uids` must be sorted and distinct. The kernel derives the mode bits from it (group bits = mask).
/// With no `uids`, removes any access ACL (the mode alone decides).
/// Returns 0 or -1 (errno set; EOPNOTSUPP where the filesystem has no ACLs).
int cstack_set_user_acl(const char *path, unsigned owner_perm, const uint32_t *uids, int count, unsigned user_perm);

#endif

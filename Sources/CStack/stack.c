#include "CStack.h"

#include <stdlib.h>
#include <sys/eventfd.h>
#include <errno.h>
#include <numa.h>
#include <pthread.h>
#include <sched.h>
#include <string.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>
#include <lwip/ip.h>
#include <lwip/priv/tcp_priv.h>
#include <netinet/tcp.h>
#include <lwip/netif.h>
#include <lwip/sys.h>
#include <lwip/tcpip.h>

// MARK: lifecycle

static void cstack_tcpip_ready(void *arg) { sys_sem_signal((sys_sem_t *)arg); }

void cstack_start(void) {
    sys_sem_t ready;
    sys_sem_new(&ready, 0);
    tcpip_init(cstack_tcpip_ready, &ready);
    sys_sem_wait(&ready);
    sys_sem_free(&ready);
}

void cstack_lock(void) { LOCK_TCPIP_CORE(); }
void cstack_unlock(void) { UNLOCK_TCPIP_CORE(); }

// MARK: addresses

void cstack_ip_set(ip_addr_t *out, int family, const uint8_t *bytes, uint32_t zone) {
    memset(out, 0, sizeof *out);
    if (family == 4) {
        IP_SET_TYPE_VAL(*out, IPADDR_TYPE_V4);
        memcpy(&ip_2_ip4(out)->addr, bytes, 4);
    } else {
        IP_SET_TYPE_VAL(*out, IPADDR_TYPE_V6);
        memcpy(ip_2_ip6(out)->addr, bytes, 16);
#if LWIP_IPV6_SCOPES
        ip6_addr_set_zone(ip_2_ip6(out), (u8_t)zone);
#endif
        (void)zone;
    }
}

int cstack_ip_get(const ip_addr_t *ip, uint8_t *bytes) {
    if (IP_IS_V4(ip)) {
        memcpy(bytes, &ip_2_ip4(ip)->addr, 4);
        return 4;
    }
    if (IP_IS_V6(ip)) {
        memcpy(bytes, ip_2_ip6(ip)->addr, 16);
        return 6;
    }
    return 0;
}

void cstack_ip_set_any(ip_addr_t *out, int family) {
    if (family == 4) ip_addr_copy(*out, *IP4_ADDR_ANY);
    else if (family == 6) ip_addr_copy(*out, *IP6_ADDR_ANY);
    else ip_addr_copy(*out, *IP_ANY_TYPE); // 0: both (a dual-stack wildcard)
}

// MARK: loopback netifs

void cstack_ip4_triple(ip4_addr_t *ip, ip4_addr_t *mask, ip4_addr_t *gw, const uint8_t *ip4, const uint8_t *mask4,
                       const uint8_t *gw4) {
    ip4_addr_set_zero(ip);
    ip4_addr_set_zero(mask);
    ip4_addr_set_zero(gw);
    if (ip4) memcpy(&ip->addr, ip4, 4);
    if (mask4) memcpy(&mask->addr, mask4, 4);
    if (gw4) memcpy(&gw->addr, gw4, 4);
}

#define CSTACK_MAX_LOOPBACKS 16
static struct netif cstack_loopbacks[CSTACK_MAX_LOOPBACKS];
static int cstack_loopback_count;

static int cstack_loopback_capture = -1;
void cstack_loopback_set_capture(int interface_id) { cstack_loopback_capture = interface_id; }

// Every packet to one of the stack's own addresses (on any netif) goes through netif_loop_output,
// called by lwIP's IP output code before any netif output function. liblwip.so calls it through
// its PLT, so this definition in the executable replaces lwIP's own (an ELF interposition). We do
// what lwIP's does — queue a copy for delivery — with two differences:
// - the copy is recorded in the capture file (packets on the loopback path never reach a netif's
//   output function, so this is the only place to see them);
// - delivery happens on the server's stack thread, which drains the queue at the end of every batch
//   (cstack_loopback_poll_all) or, for packets looped by lwIP's own thread (timers), when woken by
//   an eventfd. lwIP's version posts netif_poll to the tcpip thread's mailbox instead, which woke
//   that thread and made it contend for the core lock for every burst of looped packets: 45% of the
//   server's time went to context switches in a loopback TCP stream.
struct cstack_looped {
    struct pbuf *p;
    struct netif *netif;
};
static struct cstack_looped *cstack_loop_queue;
static size_t cstack_loop_capacity, cstack_loop_head, cstack_loop_count;
static int cstack_loop_eventfd = -1;
static __thread int cstack_in_batch;

int cstack_loopback_eventfd(void) {
    if (cstack_loop_eventfd < 0) cstack_loop_eventfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    return cstack_loop_eventfd;
}

void cstack_batch_begin(void) { cstack_in_batch = 1; }
void cstack_batch_end(void) { cstack_in_batch = 0; }

err_t netif_loop_output(struct netif *netif, struct pbuf *p) {
    // Called with the core lock held (from lwIP's IP output path).
    if (cstack_loopback_capture >= 0) cstack_capture_ip_packet(cstack_loopback_capture, p);
    struct pbuf *copy = pbuf_alloc(PBUF_LINK, p->tot_len, PBUF_RAM);
    if (copy == NULL) {
        cstack_count_drop(netif, 1);
        return ERR_MEM;
    }
    if (pbuf_copy(copy, p) != ERR_OK) {
        pbuf_free(copy);
        cstack_count_drop(netif, 1);
        return ERR_MEM;
    }
    cstack_count_packet(netif, p, 0, 1);
    if (cstack_loop_count == cstack_loop_capacity) {
        size_t capacity = cstack_loop_capacity ? cstack_loop_capacity * 2 : 256;
        struct cstack_looped *grown = malloc(capacity * sizeof *grown);
        if (grown == NULL) {
            pbuf_free(copy);
            cstack_count_drop(netif, 1);
            return ERR_MEM;
        }
        for (size_t i = 0; i < cstack_loop_count; i++)
            grown[i] = cstack_loop_queue[(cstack_loop_head + i) % cstack_loop_capacity];
        free(cstack_loop_queue);
        cstack_loop_queue = grown;
        cstack_loop_capacity = capacity;
        cstack_loop_head = 0;
    }
    cstack_loop_queue[(cstack_loop_head + cstack_loop_count) % cstack_loop_capacity] = (struct cstack_looped){copy, netif};
    cstack_loop_count++;
    if (cstack_loop_count == 1 && !cstack_in_batch && cstack_loop_eventfd >= 0) {
        uint64_t one = 1;
        ssize_t ignored = write(cstack_loop_eventfd, &one, sizeof one);
        (void)ignored;
    }
    return ERR_OK;
}

// Output functions of a loopback netif. lwIP calls them only for destinations on a loopback
// network that are not one of our addresses (ours go straight to netif_loop_output): nobody is
// there, and looping such a packet back would only have lwIP forward it around until its TTL ran
// out. Refuse it, as a host with no route would.
static err_t cstack_loop_output4(struct netif *netif, struct pbuf *p, const ip4_addr_t *addr) {
    (void)netif;
    (void)p;
    (void)addr;
    return ERR_RTE;
}

static err_t cstack_loop_output6(struct netif *netif, struct pbuf *p, const ip6_addr_t *addr) {
    (void)netif;
    (void)p;
    (void)addr;
    return ERR_RTE;
}

static err_t cstack_loopback_init(struct netif *netif) {
    netif->name[0] = 'l';
    netif->name[1] = 'o';
    netif->output = cstack_loop_output4;
    netif->output_ip6 = cstack_loop_output6;
    netif->flags = 0; // no ARP, no broadcast: packets never leave
    return ERR_OK;
}

struct netif *cstack_loopback_add(const uint8_t *ip4, const uint8_t *mask4, uint16_t mtu) {
    if (cstack_loopback_count >= CSTACK_MAX_LOOPBACKS) return NULL;
    struct netif *netif = &cstack_loopbacks[cstack_loopback_count];
    ip4_addr_t ip, mask, gw;
    cstack_ip4_triple(&ip, &mask, &gw, ip4, mask4, NULL);
    if (netif_add(netif, &ip, &mask, &gw, NULL, cstack_loopback_init, tcpip_input) == NULL) return NULL;
    netif->mtu = mtu;
#if LWIP_IPV6
    netif->mtu6 = mtu;
    netif->rs_count = 0; // no router solicitations on a loopback
#endif
    // Not the default interface: a destination outside the loopback networks has no route
    // (ENETUNREACH, as on a host without a default route) unless a TAP interface provides one.
    netif_set_link_up(netif);
    netif_set_up(netif);
    cstack_loopback_count++;
    return netif;
}

int cstack_netif_add_ip6(struct netif *netif, const uint8_t *ip6) {
    ip6_addr_t addr;
    memcpy(addr.addr, ip6, 16);
#if LWIP_IPV6_SCOPES
    ip6_addr_clear_zone(&addr);
#endif
    for (int i = 0; i < LWIP_IPV6_NUM_ADDRESSES; i++) {
        if (ip6_addr_isinvalid(netif_ip6_addr_state(netif, i))) {
            netif_ip6_addr_set(netif, i, &addr);
            netif_ip6_addr_set_state(netif, i, IP6_ADDR_PREFERRED);
            return i;
        }
    }
    return -1;
}

int cstack_is_local_address(const ip_addr_t *ip) {
    struct netif *netif;
    NETIF_FOREACH(netif) {
        if (IP_IS_V4(ip)) {
            if (ip4_addr_cmp(ip_2_ip4(ip), netif_ip4_addr(netif))) return 1;
        } else if (netif_get_ip6_addr_match(netif, ip_2_ip6(ip)) >= 0) {
            return 1;
        }
    }
    return 0;
}

void cstack_loopback_poll_all(void) {
    // Packets that ip_input loops in turn (replies) join the queue and are delivered in this loop,
    // but only so many: two of lwIP's connections whose receive windows are both closed answer each
    // other's pure ACKs with pure ACKs for ever (tcp_receive ACKs every segment outside a zero
    // window), and an unbounded loop then keeps the stack thread here, so the applications are never
    // served, never read, and the windows never open (seen: the server at 100% CPU in this loop and
    // a 1 GiB echo stalled). Bounded, the rest waits for the next batch (the eventfd brings it back
    // at once), the event loop serves the applications in between, and their reads open a window,
    // which ends such an exchange.
    size_t budget = cstack_loop_count + 64;
    while (cstack_loop_count > 0 && budget-- > 0) {
        struct cstack_looped next = cstack_loop_queue[cstack_loop_head];
        cstack_loop_head = (cstack_loop_head + 1) % cstack_loop_capacity;
        cstack_loop_count--;
        cstack_count_packet(next.netif, next.p, 0, 0);
        if (!netif_is_up(next.netif) || ip_input(next.p, next.netif) != ERR_OK) {
            pbuf_free(next.p);
            cstack_count_drop(next.netif, 0);
        }
    }
    if (cstack_loop_count > 0 && cstack_loop_eventfd >= 0) {
        uint64_t one = 1;
        ssize_t ignored = write(cstack_loop_eventfd, &one, sizeof one);
        (void)ignored;
    }
}

// MARK: pbufs

struct pbuf *cstack_pbuf_alloc_transport(uint16_t size) { return pbuf_alloc(PBUF_TRANSPORT, size, PBUF_RAM); }

void cstack_pbuf_set_length(struct pbuf *p, uint16_t len) {
    p->len = len;
    p->tot_len = len;
}

// MARK: NUMA and CPUs

int cstack_numa_node_of_current_cpu(void) {
    if (numa_available() < 0) return -1;
    int cpu = sched_getcpu();
    if (cpu < 0) return -1;
    return numa_node_of_cpu(cpu);
}

int cstack_numa_bind(void *addr, size_t len, int node) {
    if (numa_available() < 0 || node < 0 || node > numa_max_node()) return -1;
    numa_tonode_memory(addr, len, node);
    return 0;
}

int cstack_pin_to_cpu(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return pthread_setaffinity_np(pthread_self(), sizeof set, &set);
}

// MARK: syscalls behind _GNU_SOURCE

int cstack_accept(int fd) { return accept4(fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK); }

int cstack_termination_signalfd(void) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGHUP);
    return signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
}

int cstack_read_signal(int fd) {
    struct signalfd_siginfo info;
    ssize_t n = read(fd, &info, sizeof info);
    if (n == (ssize_t)sizeof info) return (int)info.ssi_signo;
    if (n < 0 && errno == EAGAIN) return 0;
    return -1;
}

// MARK: TCP

size_t cstack_tcp_info(const struct tcp_pcb *pcb, void *out, size_t len) {
    // lwIP state -> Linux TCP_* state numbers. TIME_WAIT reports CLOSE: Linux moves a connection in
    // TIME_WAIT to a separate mini-socket, and the application's socket is then in CLOSE.
    static const uint8_t linux_state[] = {7, 10, 2, 3, 1, 4, 5, 8, 11, 9, 7};
    struct tcp_info info;
    memset(&info, 0, sizeof info);
    int state = pcb ? (int)pcb->state : CLOSED;
    info.tcpi_state = (state >= 0 && state < 11) ? linux_state[state] : 7;
    // A listener is a struct tcp_pcb_listen: it has none of the fields below.
    if (pcb && state != LISTEN) {
        info.tcpi_retransmits = pcb->nrtx;
        info.tcpi_snd_mss = tcp_mss(pcb);
        info.tcpi_rcv_mss = pcb->mss;
        info.tcpi_rto = (uint32_t)pcb->rto * TCP_SLOW_INTERVAL * 1000u;       // us
        info.tcpi_rtt = (uint32_t)(pcb->sa >> 3) * TCP_SLOW_INTERVAL * 1000u; // us (smoothed, coarse)
        info.tcpi_rttvar = (uint32_t)pcb->sv * TCP_SLOW_INTERVAL * 1000u;
        info.tcpi_snd_ssthresh = pcb->ssthresh / tcp_mss(pcb);
        info.tcpi_snd_cwnd = pcb->cwnd / tcp_mss(pcb);
        info.tcpi_rcv_space = pcb->rcv_wnd;
        info.tcpi_unacked = pcb->snd_queuelen;
    }
    size_t n = len < sizeof info ? len : sizeof info;
    memcpy(out, &info, n);
    return n;
}

// Whether two bound addresses can overlap: the same IP version, or one of them dual-stack.
static int cstack_same_family(const ip_addr_t *a, const ip_addr_t *b) {
    return IP_GET_TYPE(a) == IPADDR_TYPE_ANY || IP_GET_TYPE(b) == IPADDR_TYPE_ANY || IP_GET_TYPE(a) == IP_GET_TYPE(b);
}

int cstack_tcp_port_in_time_wait(const ip_addr_t *ip, uint16_t port) {
    for (struct tcp_pcb *p = tcp_tw_pcbs; p != NULL; p = p->next) {
        if (p->local_port != port || ip_get_option(p, SOF_REUSEADDR) || !cstack_same_family(&p->local_ip, ip)) continue;
        if (ip_addr_isany(&p->local_ip) || ip_addr_isany(ip) || ip_addr_cmp(&p->local_ip, ip)) return 1;
    }
    return 0;
}

int cstack_tcp_port_listening(const ip_addr_t *ip, uint16_t port) {
    for (struct tcp_pcb_listen *l = tcp_listen_pcbs.listen_pcbs; l != NULL; l = l->next) {
        if (l->local_port != port || !cstack_same_family(&l->local_ip, ip)) continue;
        if (ip_addr_isany(&l->local_ip) || ip_addr_isany(ip) || ip_addr_cmp(&l->local_ip, ip)) return 1;
    }
    return 0;
}

struct tcp_pcb *cstack_tcp_listen(struct tcp_pcb *pcb, uint8_t backlog, err_t *err) {
    return tcp_listen_with_backlog_and_err(pcb, backlog, err);
}

uint16_t cstack_tcp_raise_local_mss(struct tcp_pcb *pcb, uint16_t mss) {
    // Only when the peer is one of our own addresses: such packets go through netif_loop_output
    // and are never fragmented or put on a wire.
    struct netif *netif;
    int local = 0;
    NETIF_FOREACH(netif) {
        if (IP_IS_V4(&pcb->remote_ip) ? ip4_addr_cmp(ip_2_ip4(&pcb->remote_ip), netif_ip4_addr(netif))
                                      : netif_get_ip6_addr_match(netif, ip_2_ip6(&pcb->remote_ip)) >= 0) {
            local = 1;
            break;
        }
    }
    if (local && mss > pcb->mss) pcb->mss = mss;
    return pcb->mss;
}

// MARK: admission

#include <dirent.h>
#include <endian.h>
#include <stdio.h>
#include <sys/resource.h>
#include <sys/timerfd.h>
#include <sys/xattr.h>

int cstack_raise_descriptor_limit(long *before, long *after) {
    struct rlimit limit;
    if (getrlimit(RLIMIT_NOFILE, &limit) != 0) return errno;
    *before = *after = (long)limit.rlim_cur;
    rlim_t target = limit.rlim_max;
    if (target == RLIM_INFINITY) {
        // The kernel refuses more than fs.nr_open descriptors whatever the limit says.
        long nr_open = 1048576;
        FILE *f = fopen("/proc/sys/fs/nr_open", "re");
        if (f) {
            if (fscanf(f, "%ld", &nr_open) != 1) nr_open = 1048576;
            fclose(f);
        }
        target = (rlim_t)nr_open;
    }
    if (target <= limit.rlim_cur) return 0;
    limit.rlim_cur = target;
    if (setrlimit(RLIMIT_NOFILE, &limit) != 0) return errno;
    *after = (long)target;
    return 0;
}

int cstack_count_open_descriptors(void) {
    DIR *dir = opendir("/proc/self/fd");
    if (!dir) return -1;
    int count = 0;
    struct dirent *entry;
    while ((entry = readdir(dir)) != NULL) {
        if (entry->d_name[0] != '.') count++;
    }
    closedir(dir);
    return count - 1; // the directory's own descriptor
}

int cstack_timerfd(void) { return timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC); }

int cstack_timerfd_arm(int fd, uint64_t deadline) {
    struct itimerspec spec;
    memset(&spec, 0, sizeof spec);
    spec.it_value.tv_sec = (time_t)(deadline / 1000000000u);
    spec.it_value.tv_nsec = (long)(deadline % 1000000000u);
    return timerfd_settime(fd, TFD_TIMER_ABSTIME, &spec, NULL);
}

void cstack_timerfd_clear(int fd) {
    uint64_t expirations;
    ssize_t n;
    do { n = read(fd, &expirations, sizeof expirations); } while (n < 0 && errno == EINTR);
}

// The kernel's xattr format of a POSIX ACL (linux/posix_acl_xattr.h): a version, then entries sorted
// by tag and id, all little-endian.
struct cstack_acl_entry {
    uint16_t tag;
    uint16_t perm;
    uint32_t id;
};

int cstack_set_user_acl(const char *path, unsigned owner_perm, const uint32_t *uids, int count, unsigned user_perm) {
    enum { USER_OBJ = 0x01, USER = 0x02, GROUP_OBJ = 0x04, MASK = 0x10, OTHER = 0x20 };
    const uint32_t undefined = 0xFFFFFFFFu;
    if (count == 0) {
        // No named users: no ACL (the mode alone decides); none to remove is fine.
        int rc = removexattr(path, "system.posix_acl_access");
        return (rc == 0 || errno == ENODATA || errno == EOPNOTSUPP) ? 0 : -1;
    }
    if (count < 0 || count > 1024) {
        errno = EINVAL;
        return -1;
    }
    size_t entries = (size_t)count + 4;
    size_t size = 4 + entries * sizeof(struct cstack_acl_entry);
    uint8_t *buffer = calloc(1, size);
    if (!buffer) return -1;
    uint32_t version = htole32(2);
    memcpy(buffer, &version, 4);
    struct cstack_acl_entry *e = (struct cstack_acl_entry *)(buffer + 4);
    size_t i = 0;
    e[i++] = (struct cstack_acl_entry){htole16(USER_OBJ), htole16((uint16_t)owner_perm), htole32(undefined)};
    for (int u = 0; u < count; u++) {
        e[i++] = (struct cstack_acl_entry){htole16(USER), htole16((uint16_t)user_perm), htole32(uids[u])};
    }
    e[i++] = (struct cstack_acl_entry){htole16(GROUP_OBJ), 0, htole32(undefined)};
    e[i++] = (struct cstack_acl_entry){htole16(MASK), htole16((uint16_t)user_perm), htole32(undefined)};
    e[i++] = (struct cstack_acl_entry){htole16(OTHER), 0, htole32(undefined)};
    int rc = setxattr(path, "system.posix_acl_access", buffer, size, 0);
    int saved = errno;
    free(buffer);
    errno = saved;
    return rc;
}

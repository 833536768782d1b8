#include "CStack.h"

#include <dlfcn.h>
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
    else ip_addr_copy(*out, *IP6_ADDR_ANY);
}

// MARK: loopback netifs

#define CSTACK_MAX_LOOPBACKS 16
static struct netif cstack_loopbacks[CSTACK_MAX_LOOPBACKS];
static int cstack_loopback_count;

static int cstack_loopback_capture = -1;
void cstack_loopback_set_capture(int interface_id) { cstack_loopback_capture = interface_id; }

// Every packet to one of the stack's own addresses (on any netif) goes through netif_loop_output,
// called by lwIP's IP output code before any netif output function. To capture those packets we
// interpose on the symbol: liblwip.so calls it through its PLT, so this definition in the
// executable wins, records the packet (raw IP) and forwards to lwIP's own.
typedef err_t (*cstack_loop_output_fn)(struct netif *, struct pbuf *);

err_t netif_loop_output(struct netif *netif, struct pbuf *p) {
    static cstack_loop_output_fn real;
    if (real == NULL) real = (cstack_loop_output_fn)dlsym(RTLD_NEXT, "netif_loop_output");
    if (cstack_loopback_capture >= 0) cstack_capture_ip_packet(cstack_loopback_capture, p);
    return real(netif, p);
}

static err_t cstack_loop_output4(struct netif *netif, struct pbuf *p, const ip4_addr_t *addr) {
    (void)addr;
    return netif_loop_output(netif, p);
}

static err_t cstack_loop_output6(struct netif *netif, struct pbuf *p, const ip6_addr_t *addr) {
    (void)addr;
    return netif_loop_output(netif, p);
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
    ip4_addr_set_zero(&ip);
    ip4_addr_set_zero(&mask);
    ip4_addr_set_zero(&gw);
    if (ip4) memcpy(&ip.addr, ip4, 4);
    if (mask4) memcpy(&mask.addr, mask4, 4);
    if (netif_add(netif, &ip, &mask, &gw, NULL, cstack_loopback_init, tcpip_input) == NULL) return NULL;
    netif->mtu = mtu;
#if LWIP_IPV6
    netif->mtu6 = mtu;
    netif->rs_count = 0; // no router solicitations on a loopback
#endif
    if (cstack_loopback_count == 0) netif_set_default(netif);
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
    for (int i = 0; i < cstack_loopback_count; i++) netif_poll(&cstack_loopbacks[i]);
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
    // lwIP state -> Linux TCP_* state numbers.
    static const uint8_t linux_state[] = {7, 10, 2, 3, 1, 4, 5, 8, 11, 9, 6};
    struct tcp_info info;
    memset(&info, 0, sizeof info);
    int state = (int)pcb->state;
    info.tcpi_state = (state >= 0 && state < 11) ? linux_state[state] : 7;
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
    size_t n = len < sizeof info ? len : sizeof info;
    memcpy(out, &info, n);
    return n;
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

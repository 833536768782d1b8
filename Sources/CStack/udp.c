// UDP semantics lwIP leaves to the socket layer: the source address a connect gives, unbinding on
// disconnect, broadcast destinations, and ICMP port unreachable for connected sockets.
#include "CStack.h"

#include <lwip/icmp.h>
#include <lwip/icmp6.h>
#include <lwip/inet_chksum.h>
#include <lwip/ip.h>
#include <lwip/prot/icmp6.h>
#include <lwip/raw.h>

void cstack_udp_take_source_address(struct udp_pcb *pcb) {
    if (!ip_addr_isany(&pcb->local_ip)) return;
    // What udp_sendto / udp_sendto_if do for every datagram of a pcb bound to the wildcard.
    struct netif *netif = pcb->netif_idx != NETIF_NO_INDEX ? netif_get_by_index(pcb->netif_idx)
                                                           : ip_route(&pcb->local_ip, &pcb->remote_ip);
    if (netif == NULL) return;
    if (IP_IS_V6(&pcb->remote_ip)) {
        const ip_addr_t *src = ip6_select_source_address(netif, ip_2_ip6(&pcb->remote_ip));
        if (src != NULL) ip_addr_copy(pcb->local_ip, *src);
    } else {
        ip_addr_copy(pcb->local_ip, *netif_ip_addr4(netif));
    }
}

void cstack_udp_unbind(struct udp_pcb *pcb) {
    // udp_bind and udp_connect put a pcb that is not on the list back on it (udp_sendto binds a pcb
    // whose port is 0), and udp_remove accepts one that is not there.
    for (struct udp_pcb **link = &udp_pcbs; *link != NULL; link = &(*link)->next) {
        if (*link == pcb) {
            *link = pcb->next;
            break;
        }
    }
    pcb->next = NULL;
    pcb->local_port = 0;
}

int cstack_ip_is_broadcast(const ip_addr_t *ip) {
    if (!IP_IS_V4(ip) || ip4_addr_isany(ip_2_ip4(ip))) return 0; // 0.0.0.0 is this host on Linux
    if (ip4_addr_get_u32(ip_2_ip4(ip)) == IPADDR_BROADCAST) return 1;
    struct netif *netif;
    NETIF_FOREACH(netif) {
        if (ip4_addr_isbroadcast(ip_2_ip4(ip), netif)) return 1;
    }
    return 0;
}

// MARK: ICMP port unreachable

static udp_recv_fn cstack_refused_recv;
static void (*cstack_refused_handler)(void *arg);

static int cstack_same_address(const ip_addr_t *a, const ip_addr_t *b) {
    if (IP_GET_TYPE(a) != IP_GET_TYPE(b)) return 0;
    return IP_IS_V6(a) ? ip6_addr_cmp_zoneless(ip_2_ip6(a), ip_2_ip6(b)) : ip4_addr_cmp(ip_2_ip4(a), ip_2_ip4(b));
}

/// The datagram src:sport -> dst:dport was refused: tell the connected socket of ours that sent it.
/// The socket is found as Linux's __udp4_lib_err / __udp6_lib_err find it (local port, local
/// address or the wildcard, remote address and port); an unconnected socket hears nothing.
static void cstack_udp_refused(const ip_addr_t *src, uint16_t sport, const ip_addr_t *dst, uint16_t dport) {
    for (struct udp_pcb *pcb = udp_pcbs; pcb != NULL; pcb = pcb->next) {
        if (pcb->recv != cstack_refused_recv || !(pcb->flags & UDP_FLAGS_CONNECTED)) continue;
        if (pcb->local_port != sport || pcb->remote_port != dport) continue;
        if (!cstack_same_address(&pcb->remote_ip, dst)) continue;
        if (!ip_addr_isany(&pcb->local_ip) && !cstack_same_address(&pcb->local_ip, src)) continue;
        cstack_refused_handler(pcb->recv_arg);
        return;
    }
}

/// Whether the ICMP message after the `hlen` bytes of IP header has a good checksum (what lwIP's
/// icmp_input / icmp6_input check before they look at a message, and so does Linux).
static int cstack_icmp_checksum_ok(struct pbuf *p, uint16_t hlen, int v6) {
    if (pbuf_remove_header(p, hlen) != 0) return 0;
    uint16_t sum = v6 ? ip6_chksum_pseudo(p, IP6_NEXTH_ICMP6, p->tot_len, ip6_current_src_addr(), ip6_current_dest_addr())
                      : inet_chksum_pbuf(p);
    pbuf_add_header_force(p, hlen); // raw_input wants the packet back as it gave it
    return sum == 0;
}

/// A raw pcb's receive callback for every ICMP and ICMPv6 packet the stack receives (from a TAP
/// peer, or lwIP's own answer to a datagram sent to one of our addresses where no pcb is bound).
/// Never eats the packet: lwIP's ICMP code sees it as before.
static u8_t cstack_icmp_seen(void *arg, struct raw_pcb *raw, struct pbuf *p, const ip_addr_t *from) {
    (void)arg;
    (void)raw;
    (void)from;
    int v6 = ip_current_is_v6();
    uint16_t hlen = ip_current_header_tot_len();
    // The ICMP header, the quoted IP header (up to 60 bytes) and the quoted UDP ports.
    uint8_t m[8 + 60 + 4];
    uint16_t n = pbuf_copy_partial(p, m, sizeof m, hlen);
    if (n < 8 || m[0] != (v6 ? ICMP6_TYPE_DUR : ICMP_DUR) || m[1] != (v6 ? ICMP6_DUR_PORT : ICMP_DUR_PORT)) return 0;
    const uint8_t *quoted = m + 8;
    ip_addr_t src, dst;
    uint16_t qlen;
    if (v6) {
        qlen = IP6_HLEN;
        if (n < 8 + IP6_HLEN + 4 || quoted[0] >> 4 != 6 || quoted[6] != IP6_NEXTH_UDP) return 0;
        cstack_ip_set(&src, 6, quoted + 8, 0);
        cstack_ip_set(&dst, 6, quoted + 24, 0);
    } else {
        if (n < 8 + IP_HLEN + 4) return 0;
        qlen = (uint16_t)((quoted[0] & 0x0f) * 4);
        if (quoted[0] >> 4 != 4 || qlen < IP_HLEN || n < 8 + qlen + 4 || quoted[9] != IP_PROTO_UDP) return 0;
        cstack_ip_set(&src, 4, quoted + 12, 0);
        cstack_ip_set(&dst, 4, quoted + 16, 0);
    }
    if (!cstack_icmp_checksum_ok(p, hlen, v6)) return 0;
    const uint8_t *ports = quoted + qlen;
    cstack_udp_refused(&src, (uint16_t)(ports[0] << 8 | ports[1]), &dst, (uint16_t)(ports[2] << 8 | ports[3]));
    return 0;
}

int cstack_udp_report_refusals(udp_recv_fn recv, void (*handler)(void *arg)) {
    if (cstack_refused_handler != NULL) return 0;
    struct raw_pcb *v4 = raw_new_ip_type(IPADDR_TYPE_V4, IP_PROTO_ICMP);
    struct raw_pcb *v6 = raw_new_ip_type(IPADDR_TYPE_V6, IP6_NEXTH_ICMP6);
    if (v4 == NULL || v6 == NULL) {
        if (v4 != NULL) raw_remove(v4);
        if (v6 != NULL) raw_remove(v6);
        return -1;
    }
    cstack_refused_recv = recv;
    cstack_refused_handler = handler;
    raw_recv(v4, cstack_icmp_seen, NULL);
    raw_recv(v6, cstack_icmp_seen, NULL);
    return 0;
}

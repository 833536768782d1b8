// UDP semantics lwIP leaves to the socket layer: the source address a connect gives, unbinding on
// disconnect, broadcast destinations.
#include "CStack.h"

#include <lwip/ip.h>

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

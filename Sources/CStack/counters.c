// Packet counters at the stack's edges: every packet the stack sends or receives passes through
// netif_loop_output / cstack_loopback_poll_all (its own addresses) or the TAP device's output and
// input (stack.c, tap.c). Debian's lwIP is built without LWIP_STATS, so these are the server's own
// counts: per interface (packets, bytes, drops) and per protocol (parsed from the IP header).
// Updated and read with the core lock held.
#include "CStack.h"

#include <string.h>

static struct cstack_interface_counters cstack_interfaces[256];
static struct cstack_protocol_counters cstack_protocols;

const struct cstack_interface_counters *cstack_interface_counters(uint8_t num) { return &cstack_interfaces[num]; }
const struct cstack_protocol_counters *cstack_protocol_counters(void) { return &cstack_protocols; }

void cstack_count_drop(const struct netif *netif, int outgoing) {
    if (!netif) return;
    if (outgoing) cstack_interfaces[netif->num].tx_drops++;
    else cstack_interfaces[netif->num].rx_drops++;
}

// Counts one packet (an IP packet at `offset` in p: 0, or 14 after an Ethernet header).
void cstack_count_packet(const struct netif *netif, const struct pbuf *p, uint16_t offset, int outgoing) {
    if (netif) {
        struct cstack_interface_counters *i = &cstack_interfaces[netif->num];
        if (outgoing) { i->tx_packets++; i->tx_bytes += p->tot_len; }
        else { i->rx_packets++; i->rx_bytes += p->tot_len; }
    }
    // Captures and the recorder see each packet once: a packet between the stack's own addresses
    // when it is sent (it is counted again when delivered), a TAP frame each way.
    if (cstack_observing() && (offset == 14 || outgoing)) cstack_observe_packet(netif, p, offset == 0);
    struct cstack_protocol_counters *c = &cstack_protocols;
    uint8_t h[64];
    uint16_t n = pbuf_copy_partial(p, h, sizeof h, 0);
    if (offset == 14) {
        uint16_t type = n >= 14 ? (uint16_t)(h[12] << 8 | h[13]) : 0;
        if (type == 0x0806) { if (outgoing) c->arp_out++; else c->arp_in++; return; }
        if (type != 0x0800 && type != 0x86DD) { if (outgoing) c->other_out++; else c->other_in++; return; }
    }
    if (n < offset + 20) { if (outgoing) c->other_out++; else c->other_in++; return; }
    const uint8_t *ip = h + offset;
    int version = ip[0] >> 4;
    uint8_t proto;
    unsigned header;
    if (version == 4) {
        if (outgoing) c->ip_out++; else c->ip_in++;
        proto = ip[9];
        header = (unsigned)(ip[0] & 0xf) * 4;
        if (proto == 1) { if (outgoing) c->icmp_out++; else c->icmp_in++; }
    } else if (version == 6) {
        if (outgoing) c->ip6_out++; else c->ip6_in++;
        proto = ip[6];
        header = 40;
        if (proto == 58) { if (outgoing) c->icmp6_out++; else c->icmp6_in++; }
    } else {
        if (outgoing) c->other_out++; else c->other_in++;
        return;
    }
    if (proto == 17) {
        if (outgoing) c->udp_out++; else c->udp_in++;
    } else if (proto == 6) {
        if (outgoing) c->tcp_out++; else c->tcp_in++;
        if (n >= offset + header + 14) {
            uint8_t flags = ip[header + 13];
            if (flags & 0x04) { if (outgoing) c->tcp_rst_out++; else c->tcp_rst_in++; }
            if ((flags & 0x12) == 0x02) { if (outgoing) c->tcp_syn_out++; else c->tcp_syn_in++; }
            if (flags & 0x01) { if (outgoing) c->tcp_fin_out++; else c->tcp_fin_in++; }
        }
    }
}

int cstack_netif_info(int index, struct cstack_netif_info *out) {
    struct netif *netif;
    int i = 0;
    NETIF_FOREACH(netif) {
        if (i++ != index) continue;
        memset(out, 0, sizeof *out);
        out->num = netif->num;
        out->name[0] = netif->name[0];
        out->name[1] = netif->name[1];
        out->mtu = netif->mtu;
        out->hwaddr_len = netif->hwaddr_len;
        memcpy(out->hwaddr, netif->hwaddr, netif->hwaddr_len < 6 ? netif->hwaddr_len : 6);
        out->up = netif_is_up(netif) != 0;
        out->link_up = netif_is_link_up(netif) != 0;
        out->is_default = netif == netif_default;
        memcpy(out->ip4, &netif_ip4_addr(netif)->addr, 4);
        memcpy(out->mask4, &netif_ip4_netmask(netif)->addr, 4);
        memcpy(out->gw4, &netif_ip4_gw(netif)->addr, 4);
        for (int k = 0; k < LWIP_IPV6_NUM_ADDRESSES && k < 8; k++) {
            if (!ip6_addr_isvalid(netif_ip6_addr_state(netif, k))) continue;
            memcpy(out->ip6[out->ip6_count++], netif_ip6_addr(netif, k)->addr, 16);
        }
        return 1;
    }
    return 0;
}

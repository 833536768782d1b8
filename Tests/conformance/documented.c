/*
 * documented.c — the differences between the stack and the kernel that are deliberate (or not
 * done yet, with the issue that will do them), each with its reason. The README's "Limits" list
 * says the same. Anything not listed here fails the suite.
 */
#include "conformance.h"

#define IPV6_LENGTHS "lwIP's packet lengths are 16-bit, so an IPv6 datagram carries at most 65,487 bytes of payload " \
                     "(Linux: 65,527); larger sends fail with EMSGSIZE"
#define MULTICAST "the stack has no multicast (lwIP is built without IGMP/MLD): multicast options answer ENOPROTOOPT"
#define RCVBUF "SO_RCVBUF does not size the receive ring yet (--datagram-ring-items does; issue 13): " \
               "the value reported is the ring's, and a small SO_RCVBUF does not make the socket drop"

const struct documented documented_differences[] = {
    {"udp_msgsize/v6", "send* 65[45]*", IPV6_LENGTHS},
    {"udp_option_*", "IP_MULTICAST_*", MULTICAST},
    {"udp_option_*", "IPV6_MULTICAST_*", MULTICAST},
    {"udp_option_*", "UDP_CORK*", "UDP_CORK (corking datagrams into one) is not implemented: ENOPROTOOPT"},
    {"udp_small_rcvbuf/v*", "SO_RCVBUF get", RCVBUF},
    {"udp_small_rcvbuf/v*", "recv 2", RCVBUF},
    {"udp_small_rcvbuf/v*", "mask after*", RCVBUF},
    {0, 0, 0},
};

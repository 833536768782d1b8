#include "CStack.h"

#include <lwip/priv/tcp_priv.h>

// The other end of a local connection is an active pcb whose local and remote endpoints are this
// pcb's remote and local ones. One walk of the active list per accepted connection.
void *cstack_tcp_local_peer_arg(const struct tcp_pcb *pcb) {
    for (struct tcp_pcb *p = tcp_active_pcbs; p != NULL; p = p->next) {
        if (p != pcb && p->local_port == pcb->remote_port && p->remote_port == pcb->local_port &&
            ip_addr_cmp(&p->local_ip, &pcb->remote_ip) && ip_addr_cmp(&p->remote_ip, &pcb->local_ip)) {
            return p->callback_arg;
        }
    }
    return NULL;
}

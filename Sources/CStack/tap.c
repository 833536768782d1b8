// TAP interface for lwIP, and the pcapng capture of every frame the stack sends and receives.
#include "CStack.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/time.h>
#include <unistd.h>
#include <lwip/etharp.h>
#include <lwip/ethip6.h>
#include <lwip/netif.h>
#include <netif/ethernet.h>

// MARK: capture (pcapng, Ethernet link type throughout so that tcpdump reads it as well as tshark:
// packets on the loopback path get a synthetic Ethernet header with zero MACs)

static FILE *cstack_capture_file;
static unsigned long cstack_capture_count;

static void cstack_capture_write(const void *p, size_t n) { fwrite(p, 1, n, cstack_capture_file); }

int cstack_capture_open(const char *path) {
    cstack_capture_file = fopen(path, "wbe");
    if (!cstack_capture_file) return -1;
    // Section header block.
    uint32_t shb[7] = {0x0A0D0D0A, 28, 0x1A2B3C4D, 0x00000001, 0xFFFFFFFF, 0xFFFFFFFF, 28};
    cstack_capture_write(shb, sizeof shb);
    fflush(cstack_capture_file);
    return 0;
}

int cstack_capture_interface(uint16_t linktype) {
    static int next_id;
    if (!cstack_capture_file) return -1;
    // Interface description block: link type, snap length 65535, timestamps in microseconds (default).
    uint32_t idb[5] = {0x00000001, 20, (uint32_t)linktype, 65535, 20};
    cstack_capture_write(idb, sizeof idb);
    return next_id++;
}

static void cstack_capture_record(int interface_id, const struct pbuf *p, int synthetic_ethernet) {
    if (!cstack_capture_file || interface_id < 0) return;
    uint8_t ethernet[14] = {0};
    if (synthetic_ethernet) {
        uint8_t version = p->len > 0 ? ((const uint8_t *)p->payload)[0] >> 4 : 4;
        ethernet[12] = version == 6 ? 0x86 : 0x08;
        ethernet[13] = version == 6 ? 0xDD : 0x00;
    }
    uint32_t extra = synthetic_ethernet ? 14 : 0;
    uint32_t len = p->tot_len + extra;
    uint32_t padded = (len + 3) & ~3u;
    uint32_t block = 32 + padded;
    struct timeval tv;
    gettimeofday(&tv, NULL);
    uint64_t us = (uint64_t)tv.tv_sec * 1000000u + (uint64_t)tv.tv_usec;
    uint32_t head[7] = {0x00000006, block, (uint32_t)interface_id, (uint32_t)(us >> 32), (uint32_t)us, len, len};
    cstack_capture_write(head, sizeof head);
    if (extra) cstack_capture_write(ethernet, extra);
    for (const struct pbuf *q = p; q != NULL; q = q->next) cstack_capture_write(q->payload, q->len);
    static const uint8_t zeros[4];
    cstack_capture_write(zeros, padded - len);
    cstack_capture_write(&block, 4);
    if ((++cstack_capture_count & 255) == 0) fflush(cstack_capture_file);
}

void cstack_capture_packet(int interface_id, const struct pbuf *p) { cstack_capture_record(interface_id, p, 0); }

void cstack_capture_ip_packet(int interface_id, const struct pbuf *p) { cstack_capture_record(interface_id, p, 1); }

void cstack_capture_close(void) {
    if (!cstack_capture_file) return;
    fclose(cstack_capture_file);
    cstack_capture_file = NULL;
}

// MARK: TAP

struct cstack_tap {
    struct netif netif;
    int fd;
    int capture_id;
    uint8_t mac[6];
    uint16_t mtu;
};

int cstack_tap_open(const char *name, char *actual, size_t actual_len) {
    int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) return -1;
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    ifr.ifr_flags = IFF_TAP | IFF_NO_PI;
    if (name) strncpy(ifr.ifr_name, name, IFNAMSIZ - 1);
    if (ioctl(fd, TUNSETIFF, &ifr) != 0) {
        int saved = errno;
        close(fd);
        errno = saved;
        return -1;
    }
    if (actual && actual_len) {
        strncpy(actual, ifr.ifr_name, actual_len - 1);
        actual[actual_len - 1] = 0;
    }
    return fd;
}

static err_t cstack_tap_linkoutput(struct netif *netif, struct pbuf *p) {
    struct cstack_tap *tap = netif->state;
    uint8_t frame[65536 + 64];
    uint16_t n = pbuf_copy_partial(p, frame, p->tot_len, 0);
    cstack_capture_packet(tap->capture_id, p);
    for (;;) {
        ssize_t w = write(tap->fd, frame, n);
        if (w == (ssize_t)n) {
            cstack_count_packet(netif, p, 14, 1);
            return ERR_OK;
        }
        if (w < 0 && errno == EINTR) continue;
        cstack_count_drop(netif, 1);
        return ERR_IF; // EAGAIN (the kernel's queue is full) drops the frame, as a NIC would
    }
}

static err_t cstack_tap_init(struct netif *netif) {
    struct cstack_tap *tap = netif->state;
    netif->name[0] = 't';
    netif->name[1] = 'p';
    netif->output = etharp_output;
    netif->output_ip6 = ethip6_output;
    netif->linkoutput = cstack_tap_linkoutput;
    netif->mtu = tap->mtu;
    netif->mtu6 = tap->mtu;
    netif->hwaddr_len = 6;
    memcpy(netif->hwaddr, tap->mac, 6);
    netif->flags = NETIF_FLAG_BROADCAST | NETIF_FLAG_ETHARP | NETIF_FLAG_ETHERNET | NETIF_FLAG_IGMP | NETIF_FLAG_MLD6;
    return ERR_OK;
}

struct netif *cstack_tap_add(int fd, const uint8_t *mac, uint16_t mtu, const uint8_t *ip4, const uint8_t *mask4,
                             const uint8_t *gw4, int capture_id) {
    struct cstack_tap *tap = calloc(1, sizeof *tap);
    if (!tap) return NULL;
    tap->fd = fd;
    tap->mtu = mtu;
    tap->capture_id = capture_id;
    memcpy(tap->mac, mac, 6);
    ip4_addr_t ip, mask, gw;
    cstack_ip4_triple(&ip, &mask, &gw, ip4, mask4, gw4);
    if (netif_add(&tap->netif, &ip, &mask, &gw, tap, cstack_tap_init, ethernet_input) == NULL) {
        free(tap);
        return NULL;
    }
    netif_create_ip6_linklocal_address(&tap->netif, 1);
    netif_set_link_up(&tap->netif);
    netif_set_up(&tap->netif);
    return &tap->netif;
}

void cstack_set_default_netif(struct netif *netif) { netif_set_default(netif); }

int cstack_tap_input(struct netif *netif, int max_frames) {
    struct cstack_tap *tap = netif->state;
    uint8_t frame[65536 + 64];
    int frames = 0;
    while (frames < max_frames) {
        ssize_t n = read(tap->fd, frame, sizeof frame);
        if (n < 0) {
            if (errno == EINTR) continue;
            break; // EAGAIN: drained
        }
        if (n == 0) break;
        struct pbuf *p = pbuf_alloc(PBUF_RAW, (uint16_t)n, PBUF_RAM);
        if (!p) {
            cstack_count_drop(netif, 0);
            break;
        }
        pbuf_take(p, frame, (uint16_t)n);
        cstack_capture_packet(tap->capture_id, p);
        cstack_count_packet(netif, p, 14, 0);
        if (netif->input(p, netif) != ERR_OK) {
            pbuf_free(p);
            cstack_count_drop(netif, 0);
        }
        frames++;
    }
    return frames;
}

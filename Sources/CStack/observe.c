// Live captures and the flight recorder: packets the stack sends and receives, seen where they are
// counted (counters.c), as Ethernet frames (packets between the stack's own addresses get a
// synthetic Ethernet header with zero MACs, as in the --capture file).
//
// A live capture has a tcpdump filter (compiled with libpcap, matched with pcap_offline_filter), an
// interface (or all), a packet budget and a SOCK_SEQPACKET socket to socket-stat: the pcapng section
// and interface headers, then one Enhanced Packet Block per message, sent without blocking (a
// reader that falls behind loses packets, counted; one that has gone ends the capture).
// The flight recorder keeps the most recent packets in a ring of bytes (oldest overwritten) and
// writes them out, filtered, on request. Both run with the core lock held.
#include "CStack.h"

#include <errno.h>
#include <pcap/pcap.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#define CSTACK_MAX_CAPTURES 16
#define CSTACK_SNAPLEN 262144

struct cstack_live_capture {
    int active, fd, netif_num, has_filter, generation;
    struct bpf_program program;
    uint64_t remaining; // 0: no limit
    uint64_t written, dropped;
};
static struct cstack_live_capture cstack_captures[CSTACK_MAX_CAPTURES];
static int cstack_capture_count_active;

// The flight recorder: records [u32 length][u32 netif][u64 microseconds][frame, padded to 8],
// contiguous (one that does not fit before the end starts again at 0: `wrapped`, the older records
// then lying in [tail, wrap_end) and the newer in [0, head)). The oldest go to make room.
static uint8_t *cstack_recorder;
static size_t cstack_recorder_size, cstack_recorder_head, cstack_recorder_tail, cstack_recorder_wrap_end;
static int cstack_recorder_wrapped;
static uint64_t cstack_recorder_count, cstack_recorder_packets, cstack_recorder_overwritten;

static size_t cstack_record_size(uint32_t len) { return 16 + ((len + 7) & ~(size_t)7); }

static void cstack_record(int num, uint64_t us, const uint8_t *frame, uint32_t len) {
    size_t need = cstack_record_size(len);
    if (need > cstack_recorder_size) return;
    for (;;) {
        if (cstack_recorder_count == 0) {
            cstack_recorder_head = cstack_recorder_tail = 0;
            cstack_recorder_wrapped = 0;
        }
        if (!cstack_recorder_wrapped) {
            if (cstack_recorder_head + need <= cstack_recorder_size) break;
            cstack_recorder_wrap_end = cstack_recorder_head;
            cstack_recorder_head = 0;
            cstack_recorder_wrapped = 1;
            continue;
        }
        if (cstack_recorder_head + need <= cstack_recorder_tail) break;
        uint32_t old;
        memcpy(&old, cstack_recorder + cstack_recorder_tail, 4);
        cstack_recorder_tail += cstack_record_size(old);
        cstack_recorder_count--;
        cstack_recorder_overwritten++;
        if (cstack_recorder_tail >= cstack_recorder_wrap_end) {
            cstack_recorder_tail = 0;
            cstack_recorder_wrapped = 0;
        }
    }
    uint8_t *r = cstack_recorder + cstack_recorder_head;
    uint32_t n32 = (uint32_t)num;
    memcpy(r, &len, 4);
    memcpy(r + 4, &n32, 4);
    memcpy(r + 8, &us, 8);
    memcpy(r + 16, frame, len);
    cstack_recorder_head += need;
    cstack_recorder_count++;
    cstack_recorder_packets++;
}

int cstack_observing(void) { return cstack_capture_count_active > 0 || cstack_recorder != NULL; }

/// Compiles `filter` for Ethernet frames; on failure writes libpcap's message into err.
static int cstack_compile(const char *filter, struct bpf_program *program, char *err, size_t errlen) {
    pcap_t *dead = pcap_open_dead(DLT_EN10MB, CSTACK_SNAPLEN);
    if (!dead) {
        snprintf(err, errlen, "libpcap: cannot open a dead handle");
        return -1;
    }
    int rc = pcap_compile(dead, program, filter, 1, PCAP_NETMASK_UNKNOWN);
    if (rc != 0) snprintf(err, errlen, "%s", pcap_geterr(dead));
    pcap_close(dead);
    return rc == 0 ? 0 : -1;
}

static size_t cstack_pcapng_header(uint8_t *out) {
    // Section header block, then one interface description block (Ethernet, snap length).
    uint32_t shb[7] = {0x0A0D0D0A, 28, 0x1A2B3C4D, 0x00000001, 0xFFFFFFFF, 0xFFFFFFFF, 28};
    uint32_t idb[5] = {0x00000001, 20, 1, CSTACK_SNAPLEN, 20};
    memcpy(out, shb, sizeof shb);
    memcpy(out + sizeof shb, idb, sizeof idb);
    return sizeof shb + sizeof idb;
}

/// One Enhanced Packet Block for interface 0 into out (room for 32 + len + 3 bytes).
static size_t cstack_pcapng_packet(uint8_t *out, uint64_t us, const uint8_t *frame, uint32_t len) {
    uint32_t padded = (len + 3) & ~3u;
    uint32_t block = 32 + padded;
    uint32_t head[7] = {0x00000006, block, 0, (uint32_t)(us >> 32), (uint32_t)us, len, len};
    memcpy(out, head, sizeof head);
    memcpy(out + sizeof head, frame, len);
    memset(out + sizeof head + len, 0, padded - len);
    memcpy(out + sizeof head + padded, &block, 4);
    return block;
}

static uint8_t cstack_frame[65536 + 14 + 64];
static uint8_t cstack_block[65536 + 14 + 64 + 64];

void cstack_observe_packet(const struct netif *netif, const struct pbuf *p, int synthetic_ethernet) {
    uint32_t extra = synthetic_ethernet ? 14 : 0;
    uint32_t len = p->tot_len + extra;
    if (len > sizeof cstack_frame) return;
    memset(cstack_frame, 0, extra);
    pbuf_copy_partial(p, cstack_frame + extra, p->tot_len, 0);
    if (extra) {
        uint8_t version = cstack_frame[14] >> 4;
        cstack_frame[12] = version == 6 ? 0x86 : 0x08;
        cstack_frame[13] = version == 6 ? 0xDD : 0x00;
    }
    struct timeval tv;
    gettimeofday(&tv, NULL);
    uint64_t us = (uint64_t)tv.tv_sec * 1000000u + (uint64_t)tv.tv_usec;
    int num = netif ? netif->num : -1;

    if (cstack_recorder) cstack_record(num, us, cstack_frame, len);

    if (cstack_capture_count_active == 0) return;
    struct pcap_pkthdr header = {.caplen = len, .len = len};
    header.ts.tv_sec = tv.tv_sec;
    header.ts.tv_usec = tv.tv_usec;
    size_t block = 0;
    for (int i = 0; i < CSTACK_MAX_CAPTURES; i++) {
        struct cstack_live_capture *c = &cstack_captures[i];
        if (!c->active || (c->netif_num >= 0 && c->netif_num != num)) continue;
        if (c->has_filter && !pcap_offline_filter(&c->program, &header, cstack_frame)) continue;
        if (!block) block = cstack_pcapng_packet(cstack_block, us, cstack_frame, len);
        ssize_t w = send(c->fd, cstack_block, block, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (w == (ssize_t)block) {
            c->written++;
            if (c->remaining > 0 && --c->remaining == 0) cstack_capture_stop(c->generation * CSTACK_MAX_CAPTURES + i); // its budget: done
        } else if (w < 0 && (errno == EAGAIN || errno == ENOBUFS)) {
            c->dropped++;
        } else {
            cstack_capture_stop(c->generation * CSTACK_MAX_CAPTURES + i); // the reader has gone
        }
    }
}

int cstack_capture_start(int fd, int netif_num, const char *filter, uint64_t count, char *err, size_t errlen) {
    int slot = -1;
    for (int i = 0; i < CSTACK_MAX_CAPTURES && slot < 0; i++) if (!cstack_captures[i].active) slot = i;
    if (slot < 0) {
        snprintf(err, errlen, "%d captures already run", CSTACK_MAX_CAPTURES);
        errno = EBUSY;
        return -1;
    }
    struct cstack_live_capture *c = &cstack_captures[slot];
    int generation = c->generation + 1;
    memset(c, 0, sizeof *c);
    c->generation = generation;
    if (filter && *filter) {
        if (cstack_compile(filter, &c->program, err, errlen) != 0) {
            errno = EINVAL;
            return -1;
        }
        c->has_filter = 1;
    }
    uint8_t header[64];
    size_t n = cstack_pcapng_header(header);
    if (send(fd, header, n, MSG_DONTWAIT | MSG_NOSIGNAL) != (ssize_t)n) {
        int e = errno;
        if (c->has_filter) pcap_freecode(&c->program);
        snprintf(err, errlen, "cannot write to the capture's socket: %s", strerror(e));
        errno = e;
        return -1;
    }
    c->fd = fd;
    c->netif_num = netif_num;
    c->remaining = count;
    c->active = 1;
    cstack_capture_count_active++;
    return c->generation * CSTACK_MAX_CAPTURES + slot;
}

/// The capture behind an id (slot and generation), NULL when it has ended.
static struct cstack_live_capture *cstack_capture_of(int id) {
    if (id < 0) return NULL;
    struct cstack_live_capture *c = &cstack_captures[id % CSTACK_MAX_CAPTURES];
    return c->active && c->generation == id / CSTACK_MAX_CAPTURES ? c : NULL;
}

void cstack_capture_stop(int id) {
    struct cstack_live_capture *c = cstack_capture_of(id);
    if (!c) return;
    c->active = 0;
    cstack_capture_count_active--;
    close(c->fd); // the reader sees the end
    if (c->has_filter) pcap_freecode(&c->program);
}

int cstack_capture_is_active(int id) { return cstack_capture_of(id) != NULL; }

uint64_t cstack_capture_dropped(int id) {
    struct cstack_live_capture *c = cstack_capture_of(id);
    return c ? c->dropped : 0;
}

int cstack_recorder_start(size_t size) {
    cstack_recorder = calloc(1, size);
    if (!cstack_recorder) return -1;
    cstack_recorder_size = size & ~(size_t)7;
    return 0;
}

int cstack_recorder_dump(int fd, int netif_num, const char *filter, uint64_t *packets, char *err, size_t errlen) {
    struct bpf_program program;
    int has_filter = 0;
    if (filter && *filter) {
        if (cstack_compile(filter, &program, err, errlen) != 0) {
            errno = EINVAL;
            return -1;
        }
        has_filter = 1;
    }
    uint8_t header[64];
    size_t n = cstack_pcapng_header(header);
    int rc = write(fd, header, n) == (ssize_t)n ? 0 : -1;
    *packets = 0;
    size_t at = cstack_recorder_tail;
    int upper = cstack_recorder_wrapped; // in [tail, wrap_end) first
    for (uint64_t k = 0; rc == 0 && cstack_recorder && k < cstack_recorder_count; k++) {
        if (upper && at >= cstack_recorder_wrap_end) {
            at = 0;
            upper = 0;
        }
        uint32_t len, num;
        uint64_t us;
        memcpy(&len, cstack_recorder + at, 4);
        memcpy(&num, cstack_recorder + at + 4, 4);
        memcpy(&us, cstack_recorder + at + 8, 8);
        const uint8_t *frame = cstack_recorder + at + 16;
        struct pcap_pkthdr h = {.caplen = len, .len = len};
        h.ts.tv_sec = (time_t)(us / 1000000u);
        h.ts.tv_usec = (suseconds_t)(us % 1000000u);
        if ((netif_num < 0 || (int)num == netif_num) && (!has_filter || pcap_offline_filter(&program, &h, frame))) {
            size_t b = cstack_pcapng_packet(cstack_block, us, frame, len);
            if (write(fd, cstack_block, b) != (ssize_t)b) rc = -1;
            (*packets)++;
        }
        at += cstack_record_size(len);
    }
    if (has_filter) pcap_freecode(&program);
    if (rc != 0) snprintf(err, errlen, "cannot write the recording: %s", strerror(errno));
    return rc;
}

void cstack_recorder_stats(uint64_t *packets, uint64_t *overwritten, uint64_t *held, size_t *size) {
    *packets = cstack_recorder_packets;
    *overwritten = cstack_recorder_overwritten;
    *held = cstack_recorder_count;
    *size = cstack_recorder_size;
}

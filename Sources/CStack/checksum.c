// The Internet checksum lwIP computes for every TCP/UDP segment in and out, replaced by a faster one.
//
// Debian's liblwip.so calls lwip_standard_chksum through its PLT, so this definition in the
// executable takes its place (as netif_loop_output's does, see stack.c). lwIP's version sums 16-bit
// words one at a time; it was 30% of the server's time in a loopback TCP stream. This one sums
// 64-bit words with end-around carry, which folds to the same one's complement sum of the data's
// 16-bit words in memory order (RFC 1071: the sum does not depend on the word size or on the byte
// order, only on how bytes pair up, which is from the start of the data either way). The result is
// what lwIP's returns: the folded, uncomplemented sum, in memory (network) byte order.
#include <stdint.h>
#include <string.h>

#include "CStack.h"

static inline uint64_t cstack_add_carry(uint64_t acc, uint64_t w) {
    acc += w;
    return acc + (acc < w);
}

uint16_t lwip_standard_chksum(const void *dataptr, int len) {
    const uint8_t *p = dataptr;
    uint64_t acc = 0;
    size_t n = len > 0 ? (size_t)len : 0;
    while (n >= 32) {
        uint64_t w0, w1, w2, w3;
        memcpy(&w0, p, 8);
        memcpy(&w1, p + 8, 8);
        memcpy(&w2, p + 16, 8);
        memcpy(&w3, p + 24, 8);
        acc = cstack_add_carry(acc, w0);
        acc = cstack_add_carry(acc, w1);
        acc = cstack_add_carry(acc, w2);
        acc = cstack_add_carry(acc, w3);
        p += 32;
        n -= 32;
    }
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        acc = cstack_add_carry(acc, w);
        p += 8;
        n -= 8;
    }
    uint64_t tail = 0;
    memcpy(&tail, p, n); // the last 0..7 bytes, zero-padded: an odd last byte pairs with a zero
    acc = cstack_add_carry(acc, tail);
    // Fold 64 -> 16 bits with end-around carries.
    acc = (acc & 0xFFFFFFFFu) + (acc >> 32);
    acc = (acc & 0xFFFFFFFFu) + (acc >> 32);
    acc = (acc & 0xFFFFu) + (acc >> 16);
    acc = (acc & 0xFFFFu) + (acc >> 16);
    acc = (acc & 0xFFFFu) + (acc >> 16);
    return (uint16_t)acc;
}

// Checks that the server's replacement of lwIP's lwip_standard_chksum (Sources/CStack/checksum.c)
// returns exactly what liblwip's own returns, over random data, offsets and lengths.
// Built and run by Tests/SocketTCPTests/ToolTests.swift.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
uint16_t lwip_standard_chksum(const void *dataptr, int len);
int main(void) {
    uint16_t (*real)(const void *, int) = dlsym(RTLD_NEXT, "lwip_standard_chksum");
    if (!real) { puts("no real"); return 1; }
    uint8_t buf[70000];
    srand(1);
    for (int t = 0; t < 200000; t++) {
        int off = rand() % 16, len = rand() % (t % 10 == 0 ? 66000 : 200);
        for (int i = 0; i < len + off; i++) buf[i] = rand();
        if (t % 7 == 0) for (int i = 0; i < len + off; i++) buf[i] = 0xFF;
        uint16_t a = lwip_standard_chksum(buf + off, len), b = real(buf + off, len);
        if (a != b) { printf("MISMATCH off %d len %d: %04x %04x\n", off, len, a, b); return 1; }
    }
    puts("all equal");
    return 0;
}

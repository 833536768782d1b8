#include "CShims.h"

// splitmix64 of the 8-byte word index: cheap, and any byte is computable from its position.
static inline uint64_t cshims_pattern_word(uint64_t seed, uint64_t word) {
    uint64_t z = seed + word * 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static inline uint8_t cshims_pattern_byte(uint64_t seed, uint64_t position) {
    return (uint8_t)(cshims_pattern_word(seed, position >> 3) >> ((position & 7) * 8));
}

void cshims_fill_pattern(void *buf, size_t len, uint64_t seed, uint64_t position) {
    uint8_t *p = buf;
    size_t i = 0;
    while (i < len && ((position + i) & 7) != 0) { p[i] = cshims_pattern_byte(seed, position + i); i++; }
    for (; i + 8 <= len; i += 8) {
        uint64_t w = cshims_pattern_word(seed, (position + i) >> 3);
        __builtin_memcpy(p + i, &w, 8); // little-endian: byte k of the word is position k
    }
    for (; i < len; i++) p[i] = cshims_pattern_byte(seed, position + i);
}

size_t cshims_check_pattern(const void *buf, size_t len, uint64_t seed, uint64_t position) {
    const uint8_t *p = buf;
    size_t i = 0;
    while (i < len && ((position + i) & 7) != 0) {
        if (p[i] != cshims_pattern_byte(seed, position + i)) return i;
        i++;
    }
    for (; i + 8 <= len; i += 8) {
        uint64_t w = cshims_pattern_word(seed, (position + i) >> 3), got;
        __builtin_memcpy(&got, p + i, 8);
        if (got != w) break;
    }
    for (; i < len; i++)
        if (p[i] != cshims_pattern_byte(seed, position + i)) return i;
    return len;
}

uint64_t cshims_fnv1a(const void *buf, size_t len, uint64_t hash) {
    const uint8_t *p = buf;
    for (size_t i = 0; i < len; i++) {
        hash ^= p[i];
        hash *= 0x100000001b3ull;
    }
    return hash;
}

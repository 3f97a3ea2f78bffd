// pattern.hpp - the known content of bench files: the byte at file offset o
// is a function of o alone (a splitmix64 of the 8-byte word index), so any
// range read from anywhere can be checked on its own.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace phxbench {

inline uint64_t pattern_z(uint64_t word) {
    uint64_t z = word * 0x9e3779b97f4a7c15ull + 1;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

inline uint8_t pattern_byte(uint64_t off) {
    return static_cast<uint8_t>(pattern_z(off / 8) >> ((off % 8) * 8));
}

// Fills buf with the pattern of file range [off, off + n).
inline void fill_pattern(void *buf, size_t n, uint64_t off) {
    auto *p = static_cast<uint8_t *>(buf);
    size_t i = 0;
    for (; i < n && (off + i) % 8 != 0; ++i)
        p[i] = pattern_byte(off + i);
    for (; i + 8 <= n; i += 8) { // little endian: the word is the generator's output
        const uint64_t w = pattern_z((off + i) / 8);
        std::memcpy(p + i, &w, 8);
    }
    for (; i < n; ++i)
        p[i] = pattern_byte(off + i);
}

// Index of the first byte of buf that differs from the pattern of file range
// [off, off + n), or n when all match.
inline size_t first_mismatch(const void *buf, size_t n, uint64_t off) {
    const auto *p = static_cast<const uint8_t *>(buf);
    size_t i = 0;
    for (; i < n && (off + i) % 8 != 0; ++i)
        if (p[i] != pattern_byte(off + i))
            return i;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        std::memcpy(&w, p + i, 8);
        if (w != pattern_z((off + i) / 8))
            break; // find the byte below
    }
    for (; i < n; ++i)
        if (p[i] != pattern_byte(off + i))
            return i;
    return n;
}

} // namespace phxbench

#include "stream_kernels.hpp"

namespace phxtest::gpu {

namespace {

// tests/unit/testutil.hpp's pattern, for the device.
__device__ uint8_t pattern_byte(uint64_t off, uint64_t seed) {
    uint64_t z = (off / 8) * 0x9e3779b97f4a7c15ull + seed;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return static_cast<uint8_t>(z >> ((off % 8) * 8));
}

__global__ void k_set_params(size_t *size_p, size_t size, off_t *f_off_p, off_t f_off,
                             off_t *b_off_p, off_t b_off) {
    *size_p = size;
    *f_off_p = f_off;
    if (b_off_p)
        *b_off_p = b_off;
    __threadfence_system();
}

__global__ void k_fill(uint8_t *buf, size_t n, uint8_t v) {
    for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n;
         i += size_t{gridDim.x} * blockDim.x)
        buf[i] = v;
}

__global__ void k_fill_pattern(uint8_t *buf, size_t n, uint64_t off, uint64_t seed) {
    for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n;
         i += size_t{gridDim.x} * blockDim.x)
        buf[i] = pattern_byte(off + i, seed);
}

__global__ void k_check(const uint8_t *buf, size_t n, uint64_t off, uint64_t seed, int *bad) {
    for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n;
         i += size_t{gridDim.x} * blockDim.x)
        if (buf[i] != pattern_byte(off + i, seed))
            *bad = 1;
}

__global__ void k_publish(const volatile ssize_t *result, ssize_t expect, int *flag, int *bad) {
    *flag = *bad ? 2 : (*result != expect ? 3 : 1);
    *bad = 0;
    __threadfence_system();
}

__device__ unsigned long long now_ns() {
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}

__global__ void k_busy(unsigned long long ns) {
    const unsigned long long t0 = now_ns();
    while (now_ns() - t0 < ns) {
    }
}

unsigned blocks(size_t n) {
    const size_t b = (n + 255) / 256;
    return static_cast<unsigned>(b < 1 ? 1 : (b > 1024 ? 1024 : b));
}

} // namespace

void set_params(cudaStream_t s, size_t *size_mapped, size_t size, off_t *f_off_mapped, off_t f_off,
                off_t *b_off_mapped, off_t b_off) {
    k_set_params<<<1, 1, 0, s>>>(size_mapped, size, f_off_mapped, f_off, b_off_mapped, b_off);
}

void fill(cudaStream_t s, uint8_t *buf, size_t n, uint8_t v) {
    k_fill<<<blocks(n), 256, 0, s>>>(buf, n, v);
}

void fill_pattern(cudaStream_t s, uint8_t *buf, size_t n, uint64_t off, uint64_t seed) {
    k_fill_pattern<<<blocks(n), 256, 0, s>>>(buf, n, off, seed);
}

void check(cudaStream_t s, const uint8_t *buf, size_t n, uint64_t off, uint64_t seed,
           const ssize_t *result_mapped, ssize_t expect, int *flag_mapped, int *bad) {
    if (n)
        k_check<<<blocks(n), 256, 0, s>>>(buf, n, off, seed, bad);
    k_publish<<<1, 1, 0, s>>>(result_mapped, expect, flag_mapped, bad);
}

void busy(cudaStream_t s, unsigned us) {
    k_busy<<<1, 1, 0, s>>>(1000ull * us);
}

} // namespace phxtest::gpu

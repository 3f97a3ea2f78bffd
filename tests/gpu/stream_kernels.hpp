// Kernels the stream-ordered I/O GPU tests queue around a request
// (stream_kernels.cu): they set its parameters, fill and check buffers, and
// keep a stream busy, all in stream order. Pointers named *_mapped are
// pinned host memory mapped for the GPU (cudaHostAllocMapped).
#pragma once

#include <cuda_runtime.h>
#include <sys/types.h>

#include <cstddef>
#include <cstdint>

namespace phxtest::gpu {

// *size_mapped = size, *f_off_mapped = f_off, *b_off_mapped = b_off.
void set_params(cudaStream_t s, size_t *size_mapped, size_t size, off_t *f_off_mapped, off_t f_off,
                off_t *b_off_mapped, off_t b_off);
// buf[0..n) = v.
void fill(cudaStream_t s, uint8_t *buf, size_t n, uint8_t v);
// buf[0..n) = the pattern file's bytes at off (tests/unit/testutil.hpp).
void fill_pattern(cudaStream_t s, uint8_t *buf, size_t n, uint64_t off, uint64_t seed);
// *flag_mapped = 1 when buf[0..n) holds the pattern at off and *result_mapped
// == expect; 2 when a byte differs; 3 when the result differs. bad is a
// device word of scratch.
void check(cudaStream_t s, const uint8_t *buf, size_t n, uint64_t off, uint64_t seed,
           const ssize_t *result_mapped, ssize_t expect, int *flag_mapped, int *bad);
// Spins about us microseconds: a long kernel ahead of a request.
void busy(cudaStream_t s, unsigned us);

} // namespace phxtest::gpu

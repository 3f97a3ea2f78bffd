// The direct path: O_DIRECT I/O between a file and device memory mapped by
// phxfs.ko. The kernel's own block layer and NVMe driver DMA straight to and
// from the device; no byte passes through host memory.
#pragma once

#include <cstddef>
#include <cstdint>

namespace phxfs::core {

class WorkerPool;

// Reads [off, off + n) of O_DIRECT fd dfd into mapped, offsets and length
// multiples of the file's direct-I/O unit, with up to the configured number
// of requests in flight, each a multiple of unit; returns the bytes read
// (short at end of file). The requests run on workers (the device's pool).
size_t direct_read(WorkerPool &workers, int dfd, char *mapped, size_t n, uint64_t off,
                   uint64_t unit);
// Writes n bytes from mapped at off, with the same constraints, or throws.
void direct_write(WorkerPool &workers, int dfd, const char *mapped, size_t n, uint64_t off,
                  uint64_t unit);

} // namespace phxfs::core

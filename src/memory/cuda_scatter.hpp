// The copies of a group of small requests in one kernel launch
// (scatter.cu): a copy queued through the driver costs about 3 us of CPU
// time each (cuMemcpyBatchAsync about 2 us per copy), one launch about 5 us
// for the whole group. The kernel reads and writes pinned host memory
// directly, which unified addressing maps for the GPU.
#pragma once

#include "memory/memory.hpp"

#include <cuda.h>

#include <cstddef>

namespace phxfs::core {

class ScatterKernel {
  public:
    // Loads the kernel into ctx (current). Not usable where the library was
    // built without nvcc or the driver cannot load it (usable() says).
    explicit ScatterKernel(CUcontext ctx);
    ~ScatterKernel();
    ScatterKernel(const ScatterKernel &) = delete;
    ScatterKernel &operator=(const ScatterKernel &) = delete;

    bool usable() const { return fn_ != nullptr; }

    // Pinned memory for one launch's descriptors, owned by a stream: reused
    // by its next launch, so a stream must wait before it launches again.
    class Descriptors {
      public:
        Descriptors() = default;
        ~Descriptors();
        Descriptors(const Descriptors &) = delete;
        Descriptors &operator=(const Descriptors &) = delete;

      private:
        friend class ScatterKernel;
        void *p_ = nullptr;
        size_t cap_ = 0; // in descriptors
        CUcontext ctx_ = nullptr;
    };

    // Queues copies[0..n) on stream, in stream order, as one launch.
    void launch(CUstream stream, const Stream::Copy *copies, size_t n, Descriptors &d) const;

  private:
    CUcontext ctx_;
    CUmodule module_ = nullptr;
    CUfunction fn_ = nullptr;
};

} // namespace phxfs::core

// Built instead of the CUDA backend where CUDA headers are absent: the library
// still works on host memory and says why there is no GPU.
#include "core/error.hpp"
#include "core/stream_io.hpp"
#include "memory/memory.hpp"

#include <cstdlib>

namespace phxfs::core {

void StagingFree::operator()(void *p) const noexcept {
    std::free(p);
}

MemInfo classify(const void *) {
    return {};
}

std::unique_ptr<Backend> make_cuda_backend(int ordinal, int) {
    fail(ENODEV, "CUDA GPU " + std::to_string(ordinal) + ": " + cuda_why_unavailable());
}

std::unique_ptr<StreamOrder> make_cuda_stream_order() {
    fail(ENOTSUP, "stream-ordered I/O needs CUDA: " + cuda_why_unavailable());
}

std::vector<GpuInfo> cuda_gpus() {
    return {};
}

std::string cuda_why_unavailable() {
    return "libphxfs was built without CUDA support";
}

void cuda_after_fork_child() {}

} // namespace phxfs::core

#include "memory/cuda_scatter.hpp"

#include "core/error.hpp"
#include "memory/cuda_driver.hpp"

#include <algorithm>

#ifdef PHXFS_HAVE_SCATTER
extern const unsigned char phxfs_scatter_fatbin[];
extern const size_t phxfs_scatter_fatbin_size;
#endif

namespace phxfs::core {

namespace {

const cuda::Driver &drv() {
    return *cuda::driver();
}

// scatter.cu's PhxfsCopy, and its tile: the bytes a block copies at a time.
struct Descriptor {
    unsigned long long dst, src, n;
};
constexpr size_t kTile = 64 << 10;
// Grid bounds: blocks past them loop (the kernel is grid-stride both ways).
constexpr size_t kMaxTilesPerPiece = 256;
constexpr size_t kMaxPiecesPerLaunch = 65535;

} // namespace

ScatterKernel::ScatterKernel(CUcontext ctx) : ctx_(ctx) {
#ifdef PHXFS_HAVE_SCATTER
    const cuda::Driver &d = drv();
    if (!d.cuModuleLoadData || !d.cuModuleGetFunction || !d.cuLaunchKernel || !d.cuModuleUnload)
        return;
    cuda::ContextScope scope(ctx_);
    if (d.cuModuleLoadData(&module_, phxfs_scatter_fatbin) != CUDA_SUCCESS) {
        module_ = nullptr; // no image for this GPU: the copies go one by one
        return;
    }
    if (d.cuModuleGetFunction(&fn_, module_, "phxfs_scatter") != CUDA_SUCCESS)
        fn_ = nullptr;
#endif
}

ScatterKernel::~ScatterKernel() {
    if (module_) {
        try {
            cuda::ContextScope scope(ctx_);
            drv().cuModuleUnload(module_);
        } catch (const Error &) { // the context is gone, and the module with it
        }
    }
}

ScatterKernel::Descriptors::~Descriptors() {
    if (!p_)
        return;
    try {
        cuda::ContextScope scope(ctx_);
        drv().cuMemFreeHost(p_);
    } catch (const Error &) {
    }
}

void ScatterKernel::launch(CUstream stream, const Stream::Copy *copies, size_t n,
                           Descriptors &d) const {
    cuda::ContextScope scope(ctx_);
    if (d.cap_ < n) { // grows, rarely: to the largest group seen
        if (d.p_)
            drv().cuMemFreeHost(d.p_);
        d.p_ = nullptr;
        d.cap_ = 0;
        const size_t cap = std::max<size_t>(n, 1024);
        cuda::check(drv().cuMemHostAlloc(&d.p_, cap * sizeof(Descriptor), CU_MEMHOSTALLOC_PORTABLE),
                    "cuMemHostAlloc (scatter descriptors)");
        d.cap_ = cap;
        d.ctx_ = ctx_;
    }
    auto *desc = static_cast<Descriptor *>(d.p_);
    size_t largest = 0;
    for (size_t i = 0; i < n; ++i) {
        desc[i] = {reinterpret_cast<unsigned long long>(copies[i].dst),
                   reinterpret_cast<unsigned long long>(copies[i].src), copies[i].n};
        largest = std::max(largest, copies[i].n);
    }
    void *list = d.p_;
    unsigned count = static_cast<unsigned>(n);
    void *args[] = {&list, &count};
    // A block per tile of the largest piece and per piece (scatter.cu).
    const auto tiles = static_cast<unsigned>(
        std::clamp<size_t>((largest + kTile - 1) / kTile, 1, kMaxTilesPerPiece));
    const auto pieces = static_cast<unsigned>(std::min<size_t>(n, kMaxPiecesPerLaunch));
    cuda::check(drv().cuLaunchKernel(fn_, tiles, pieces, 1, 256, 1, 1, 0, stream, args, nullptr),
                "cuLaunchKernel (scatter)");
}

} // namespace phxfs::core

// libcuda.so.1 for the VM suite only: a GPU cannot exist inside the VM, so
// this stands in for the CUDA driver over the nvidia_p2p stand-in
// (tests/vm/nvstub). "Device memory" is what the stand-in allocates (its
// debugfs alloc file); this library tells libphxfs which pointers are device
// memory, copies to and from it through the stand-in's BAR (its debugfs bar
// file, translated page by page with the stand-in's page list), and reports
// the stand-in BAR's PCI address as the GPU's, so that libphxfs matches the
// "GPU" to phxfs.ko's nvidia node exactly as it matches a real one.
//
// Environment: PHXFS_FAKE_CUDA_BDF, the stand-in BAR's PCI device.
// Only the calls libphxfs uses (src/memory/cuda_driver.hpp) exist; copies are
// synchronous, streams and contexts are tokens.
#include <cuda.h>

#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <mutex>
#include <string>

namespace {

constexpr uint64_t kGpuPage = 64 << 10;

struct Gpu {
    std::mutex m;
    std::string bdf;
    int bar = -1;
    std::map<uint64_t, uint64_t> pages; // GPU page VA -> BAR offset

    bool open() {
        const char *b = std::getenv("PHXFS_FAKE_CUDA_BDF");
        if (!b)
            return false;
        bdf = b;
        // The stand-in's window on its BAR: a GPU's copy engine, for us.
        bar = ::open("/sys/kernel/debug/nvstub/bar", O_RDWR);
        if (bar < 0)
            std::perror("fake CUDA: /sys/kernel/debug/nvstub/bar");
        return bar >= 0;
    }
    void refresh() {
        pages.clear();
        std::ifstream in("/sys/kernel/debug/nvstub/pages");
        std::string va, off;
        while (in >> va >> off)
            pages[std::stoull(va, nullptr, 0)] = std::stoull(off);
    }
    // BAR offset of device address a, or -1 when a is not device memory.
    int64_t translate(uint64_t a) {
        const uint64_t page = a & ~(kGpuPage - 1);
        auto it = pages.find(page);
        if (it == pages.end()) {
            refresh();
            it = pages.find(page);
        }
        return it == pages.end() ? -1 : static_cast<int64_t>(it->second + (a - page));
    }
    // The allocation holding a: consecutive GPU pages around it.
    bool range(uint64_t a, uint64_t &base, uint64_t &size) {
        if (translate(a) < 0)
            return false;
        base = a & ~(kGpuPage - 1);
        while (pages.count(base - kGpuPage))
            base -= kGpuPage;
        uint64_t end = (a & ~(kGpuPage - 1)) + kGpuPage;
        while (pages.count(end))
            end += kGpuPage;
        size = end - base;
        return true;
    }
    // Copies n bytes between host memory and device address dev.
    CUresult copy(uint64_t dev, void *host, size_t n, bool to_device) {
        std::lock_guard lock(m);
        auto *h = static_cast<char *>(host);
        while (n) {
            const int64_t off = translate(dev);
            if (off < 0)
                return CUDA_ERROR_INVALID_VALUE;
            const size_t step = std::min<size_t>(n, kGpuPage - (dev & (kGpuPage - 1)));
            const ssize_t done =
                to_device ? ::pwrite(bar, h, step, off) : ::pread(bar, h, step, off);
            if (done != static_cast<ssize_t>(step))
                return CUDA_ERROR_UNKNOWN;
            dev += step;
            h += step;
            n -= step;
        }
        return CUDA_SUCCESS;
    }
};

Gpu &gpu() {
    static Gpu g;
    return g;
}

CUcontext token() {
    static int t;
    return reinterpret_cast<CUcontext>(&t);
}

} // namespace

extern "C" {

CUresult cuInit(unsigned int) {
    return gpu().open() ? CUDA_SUCCESS : CUDA_ERROR_NO_DEVICE;
}
CUresult cuDriverGetVersion(int *v) {
    *v = 13000;
    return CUDA_SUCCESS;
}
CUresult cuGetErrorString(CUresult, const char **s) {
    *s = "fake CUDA driver error";
    return CUDA_SUCCESS;
}
CUresult cuDeviceGetCount(int *n) {
    *n = 1;
    return CUDA_SUCCESS;
}
CUresult cuDeviceGet(CUdevice *d, int ordinal) {
    *d = ordinal;
    return ordinal == 0 ? CUDA_SUCCESS : CUDA_ERROR_INVALID_DEVICE;
}
CUresult cuDeviceGetName(char *name, int len, CUdevice) {
    std::snprintf(name, static_cast<size_t>(len), "phxfs VM stand-in GPU");
    return CUDA_SUCCESS;
}
CUresult cuDeviceGetPCIBusId(char *bus, int len, CUdevice) {
    std::snprintf(bus, static_cast<size_t>(len), "%s", gpu().bdf.c_str());
    for (char *c = bus; *c; ++c)
        *c = static_cast<char>(std::toupper(static_cast<unsigned char>(*c))); // as CUDA does
    return CUDA_SUCCESS;
}
CUresult cuDevicePrimaryCtxRetain(CUcontext *c, CUdevice) {
    *c = token();
    return CUDA_SUCCESS;
}
CUresult cuDevicePrimaryCtxRelease(CUdevice) {
    return CUDA_SUCCESS;
}
CUresult cuCtxGetCurrent(CUcontext *c) {
    *c = token();
    return CUDA_SUCCESS;
}
CUresult cuCtxSetCurrent(CUcontext) {
    return CUDA_SUCCESS;
}
CUresult cuPointerGetAttributes(unsigned int n, CUpointer_attribute *attrs, void **data,
                                CUdeviceptr p) {
    std::lock_guard lock(gpu().m);
    const bool dev = gpu().translate(p) >= 0;
    if (!dev)
        return CUDA_ERROR_INVALID_VALUE; // host memory CUDA never saw
    for (unsigned i = 0; i < n; ++i) {
        switch (attrs[i]) {
        case CU_POINTER_ATTRIBUTE_MEMORY_TYPE:
            *static_cast<CUmemorytype *>(data[i]) = CU_MEMORYTYPE_DEVICE;
            break;
        case CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL:
            *static_cast<int *>(data[i]) = 0;
            break;
        case CU_POINTER_ATTRIBUTE_IS_MANAGED:
            *static_cast<unsigned *>(data[i]) = 0;
            break;
        default:
            return CUDA_ERROR_NOT_SUPPORTED;
        }
    }
    return CUDA_SUCCESS;
}
CUresult cuMemGetAddressRange(CUdeviceptr *base, size_t *size, CUdeviceptr p) {
    std::lock_guard lock(gpu().m);
    uint64_t b = 0, s = 0;
    if (!gpu().range(p, b, s))
        return CUDA_ERROR_INVALID_VALUE;
    if (base)
        *base = b;
    if (size)
        *size = s;
    return CUDA_SUCCESS;
}
// The stand-in's memory is plain allocations (as cudaMalloc's), never
// mapped with the virtual memory API: it has no allocation handles (the real
// driver refuses cudaMalloc memory the same way) and so no access flags,
// which libphxfs asks for only of memory that has a handle.
CUresult cuMemRetainAllocationHandle(CUmemGenericAllocationHandle *, void *) {
    return CUDA_ERROR_INVALID_VALUE;
}
CUresult cuMemRelease(CUmemGenericAllocationHandle) {
    return CUDA_ERROR_INVALID_VALUE;
}
CUresult cuMemGetAccess(unsigned long long *, const CUmemLocation *, CUdeviceptr) {
    return CUDA_ERROR_INVALID_VALUE;
}
// Write ordering of peer DMA into GPU memory: OWNER as on x86 servers, or
// what PHXFS_FAKE_CUDA_RDMA_ORDERING says (read at every call), so that the
// suite sees libphxfs flush where a platform does not order the writes.
CUresult cuDeviceGetAttribute(int *v, CUdevice_attribute attr, CUdevice) {
    if (attr == CU_DEVICE_ATTRIBUTE_GPU_DIRECT_RDMA_WRITES_ORDERING) {
        const char *e = std::getenv("PHXFS_FAKE_CUDA_RDMA_ORDERING");
        *v = e ? std::atoi(e) : CU_GPU_DIRECT_RDMA_WRITES_ORDERING_OWNER;
    } else if (attr == CU_DEVICE_ATTRIBUTE_GPU_DIRECT_RDMA_FLUSH_WRITES_OPTIONS) {
        *v = CU_FLUSH_GPU_DIRECT_RDMA_WRITES_OPTION_HOST;
    } else {
        return CUDA_ERROR_INVALID_VALUE;
    }
    return CUDA_SUCCESS;
}
static unsigned long fake_flushes = 0; // read by the suite through fake_cuda_flushes()
CUresult cuFlushGPUDirectRDMAWrites(CUflushGPUDirectRDMAWritesTarget,
                                    CUflushGPUDirectRDMAWritesScope) {
    __atomic_add_fetch(&fake_flushes, 1, __ATOMIC_RELAXED);
    return CUDA_SUCCESS;
}
unsigned long fake_cuda_flushes() {
    return __atomic_load_n(&fake_flushes, __ATOMIC_RELAXED);
}
CUresult cuMemHostAlloc(void **p, size_t n, unsigned int) {
    *p = std::aligned_alloc(4096, (n + 4095) / 4096 * 4096);
    return *p ? CUDA_SUCCESS : CUDA_ERROR_OUT_OF_MEMORY;
}
CUresult cuMemFreeHost(void *p) {
    std::free(p);
    return CUDA_SUCCESS;
}
CUresult cuStreamCreate(CUstream *s, unsigned int) {
    *s = reinterpret_cast<CUstream>(token());
    return CUDA_SUCCESS;
}
CUresult cuStreamDestroy(CUstream) {
    return CUDA_SUCCESS;
}
CUresult cuStreamSynchronize(CUstream) {
    return CUDA_SUCCESS;
}
CUresult cuStreamQuery(CUstream) {
    return CUDA_SUCCESS;
}
CUresult cuEventCreate(CUevent *e, unsigned int) {
    *e = reinterpret_cast<CUevent>(token());
    return CUDA_SUCCESS;
}
CUresult cuEventDestroy(CUevent) {
    return CUDA_SUCCESS;
}
CUresult cuEventRecord(CUevent, CUstream) {
    return CUDA_SUCCESS;
}
CUresult cuEventSynchronize(CUevent) {
    return CUDA_SUCCESS;
}
CUresult cuMemcpyHtoD(CUdeviceptr dst, const void *src, size_t n) {
    return gpu().copy(dst, const_cast<void *>(src), n, true);
}
CUresult cuMemcpyDtoH(void *dst, CUdeviceptr src, size_t n) {
    return gpu().copy(src, dst, n, false);
}
CUresult cuMemcpyHtoDAsync(CUdeviceptr dst, const void *src, size_t n, CUstream) {
    return gpu().copy(dst, const_cast<void *>(src), n, true);
}
CUresult cuMemcpyDtoHAsync(void *dst, CUdeviceptr src, size_t n, CUstream) {
    return gpu().copy(src, dst, n, false);
}

} // extern "C"

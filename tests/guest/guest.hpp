// What the programs run inside the VM share: the raw test disk, the
// NVIDIA stand-in's "GPU memory" (tests/vm/nvstub), and HOSTCHECK lines, by
// which a test asks the host to compare device memory with the disk image
// after the VM stops (tests/vm/check.py).
#pragma once

#include "../unit/testutil.hpp"

#include <cstdio>
#include <fstream>
#include <map>
#include <string>

namespace phxguest {

constexpr uint64_t kGpuPage = 64 << 10;

// A number from the environment (the harness's layout), or def.
inline uint64_t env_u64(const char *name, uint64_t def) {
    const char *v = std::getenv(name);
    return v && *v ? std::strtoull(v, nullptr, 0) : def;
}

// The raw disk the tests may overwrite (PHXFS_GUEST_DISK), or nullptr.
inline const char *raw_disk() {
    const char *d = std::getenv("PHXFS_GUEST_DISK");
    return d && *d ? d : nullptr;
}

// Puts the test pattern on the raw disk at off, with O_DIRECT from host memory.
inline void disk_pattern(uint64_t off, uint64_t len, uint64_t seed) {
    const int fd = ::open(raw_disk(), O_WRONLY | O_DIRECT);
    ASSERT_GE(fd, 0) << "open " << raw_disk();
    auto buf = phxtest::host_buffer(len);
    phxtest::fill_pattern_fast(buf.get(), len, off, seed);
    ASSERT_EQ(::pwrite(fd, buf.get(), len, off), static_cast<ssize_t>(len));
    ::close(fd);
}

// The pcibar BAR (ivshmem.bin) at bar must end up equal to the disk at disk.
inline void hostcheck_bar(uint64_t bar, uint64_t disk, uint64_t len) {
    std::printf("HOSTCHECK bar %llu disk %llu len %llu\n", (unsigned long long)bar,
                (unsigned long long)disk, (unsigned long long)len);
    std::fflush(stdout);
}

// The stand-in's cudaMalloc: a GPU virtual address of bytes of GPU memory.
inline uint64_t gpu_alloc(uint64_t bytes) {
    std::ofstream("/sys/kernel/debug/nvstub/alloc") << bytes;
    std::ifstream in("/sys/kernel/debug/nvstub/alloc");
    uint64_t va = 0;
    in >> std::hex >> va;
    return va;
}

// The stand-in's cudaFree: free callbacks run before it returns.
inline void gpu_free(uint64_t va) {
    std::ofstream("/sys/kernel/debug/nvstub/free") << va;
}

// GPU virtual address of each 64 KiB GPU page -> its offset in the BAR.
inline std::map<uint64_t, uint64_t> gpu_pages() {
    std::map<uint64_t, uint64_t> m;
    std::ifstream in("/sys/kernel/debug/nvstub/pages");
    std::string va, off;
    while (in >> va >> off)
        m[std::stoull(va, nullptr, 0)] = std::stoull(off);
    return m;
}

// GPU memory [va, va + len) must end up equal to the disk at off: one
// HOSTCHECK per GPU page, since the pages are scattered in the BAR.
inline void hostcheck_gpu(uint64_t va, uint64_t len, uint64_t off) {
    const auto pages = gpu_pages();
    for (uint64_t done = 0; done < len;) {
        const uint64_t page = (va + done) & ~(kGpuPage - 1);
        const uint64_t in = (va + done) - page;
        const uint64_t n = std::min(kGpuPage - in, len - done);
        auto it = pages.find(page);
        ASSERT_NE(it, pages.end()) << "not GPU memory: " << va + done;
        std::printf("HOSTCHECK gpubar %llu disk %llu len %llu\n",
                    (unsigned long long)(it->second + in), (unsigned long long)(off + done),
                    (unsigned long long)n);
        done += n;
    }
    std::fflush(stdout);
}

} // namespace phxguest

// What the programs run inside the VM share: the raw test disk, the
// NVIDIA stand-in's "GPU memory" (tests/vm/nvstub), and HOSTCHECK lines, by
// which a test asks the host to compare device memory with the disk image
// after the VM stops (tests/vm/check.py).
#pragma once

#include "../unit/testutil.hpp"
#include "map_request.hpp"

#include <phxfs/phxfs_ioctl.h>

#include <sys/ioctl.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <map>
#include <string>
#include <thread>

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

// Whether the device behind node has the kernel's P2PDMA pages (a kernel
// with CONFIG_PCI_P2PDMA, the pcibar provider): GUP then pins them only for
// O_DIRECT to queues that can DMA peer to peer.
inline bool p2pdma_pages(const char *node = "/dev/phxfs0") {
    const int fd = ::open(node, O_RDWR);
    phxfs_ioctl_info info{};
    info.size = sizeof info;
    const bool p2p =
        fd >= 0 && ::ioctl(fd, PHXFS_IOCTL_INFO, &info) == 0 && (info.flags & PHXFS_INFO_P2PDMA);
    if (fd >= 0)
        ::close(fd);
    return p2p;
}

// errno of a MAP or UNMAP ioctl (cmd) on a phxfs node, 0 if it succeeded.
inline int map_ioctl(int fd, unsigned long cmd, uint64_t dev, uint64_t len, const void *va) {
    phxfs_ioctl_map r = map_request(dev, len, va);
    errno = 0;
    return ::ioctl(fd, cmd, &r) < 0 ? errno : 0;
}

// What cmd (a shell command line) prints on stdout, and its wait status.
inline std::string command_output(const std::string &cmd, int *status) {
    std::string out;
    FILE *p = ::popen(cmd.c_str(), "r");
    if (!p) {
        *status = -1;
        return out;
    }
    char buf[512];
    while (std::fgets(buf, sizeof buf, p))
        out += buf;
    *status = ::pclose(p);
    return out;
}

// A number in a sysfs/debugfs file, -1 if it cannot be read.
inline int64_t read_number(const std::string &path) {
    std::ifstream in(path);
    int64_t v = -1;
    in >> v;
    return v;
}

// Counter name of /dev/phxfsN.
inline int64_t phx_counter(int dev, const char *name) {
    return read_number("/sys/class/phxfs/phxfs" + std::to_string(dev) + "/" + name);
}

// Waits up to seconds for phx_counter(dev, name) to become want (the
// module drains pins in the background); returns the last value seen.
inline int64_t wait_counter(int dev, const char *name, int64_t want, double seconds = 10) {
    const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
    int64_t v;
    while ((v = phx_counter(dev, name)) != want && std::chrono::steady_clock::now() < end)
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    return v;
}

// GPU pages the stand-in keeps out of reuse: freed, still pinned.
inline int64_t gpu_held() {
    return read_number("/sys/kernel/debug/nvstub/held");
}

// The stand-in's cudaMalloc: a GPU virtual address of bytes of GPU memory.
inline uint64_t gpu_alloc(uint64_t bytes) {
    std::ofstream("/sys/kernel/debug/nvstub/alloc") << bytes;
    std::ifstream in("/sys/kernel/debug/nvstub/alloc");
    uint64_t va = 0;
    in >> std::hex >> va;
    return va;
}

// The stand-in's cudaFree: the address goes at once, pinned pages later.
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

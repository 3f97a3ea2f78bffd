// `make demo`, inside the VM: a file on the emulated NVMe SSD goes straight
// into device memory (the ivshmem BAR served by phxfs.ko) through
// phxfs_read, every byte verified, with the library's and the module's
// counters. The host then compares the BAR's backing file with the disk.
#include "guest.hpp"

#include <chrono>
#include <cstdio>
#include <fstream>

using namespace phxtest;
using namespace phxguest;

namespace {

constexpr uint64_t kLen = 64 << 20;

std::string sysfs(const char *name) {
    std::ifstream in(std::string("/sys/class/phxfs/phxfs0/") + name);
    std::string v;
    in >> v;
    return v;
}

int fail(const char *what) {
    std::printf("demo: %s: %s\n", what, phxfs_last_error());
    return 1;
}

// Reads len bytes at file offset 0 of path into BAR offset bar; verifies.
int read_into_device(const char *label, const char *path, uint64_t bar, uint64_t seed) {
    const int fd = ::open(path, O_RDONLY);
    if (fd < 0)
        return fail(path);
    void *target = nullptr;
    if (phxfs_regmem(0, reinterpret_cast<void *>(bar), kLen, &target) != 0)
        return fail("phxfs_regmem");
    phxfs_reset_stats(0);
    const auto t0 = std::chrono::steady_clock::now();
    const ssize_t n = phxfs_read({fd, 0}, reinterpret_cast<void *>(bar), 0, kLen, 0);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    ::close(fd);
    if (n != static_cast<ssize_t>(kLen))
        return fail("phxfs_read");
    const size_t bad = first_mismatch(static_cast<uint8_t *>(target), kLen, 0, seed);
    phxfs_stats st{};
    st.size = sizeof st;
    phxfs_get_stats(0, &st);
    std::printf("%-28s %llu MiB in %.3f s (%.0f MiB/s, emulated), verified: %s\n", label,
                (unsigned long long)(kLen >> 20), s, (kLen >> 20) / s,
                bad == kLen ? "every byte matches" : "MISMATCH");
    std::printf("%-28s direct %llu bytes, compat (bounced) %llu bytes\n",
                "  library counters:", (unsigned long long)st.path[PHXFS_PATH_DIRECT].read_bytes,
                (unsigned long long)st.path[PHXFS_PATH_COMPAT].read_bytes);
    phxfs_deregmem(0, reinterpret_cast<void *>(bar), kLen);
    return bad == kLen ? 0 : 1;
}

} // namespace

int main() {
    const char *disk = raw_disk();
    const char *fs = std::getenv("PHXFS_GUEST_FS");
    if (!disk || phxfs_open(0) != 0)
        return fail("no raw disk or no /dev/phxfs0");
    phxfs_device_info info{};
    info.size = sizeof info;
    phxfs_device_get_info(0, &info);
    std::printf("device 0: %s, direct path: %s\n", info.name, info.direct ? "yes" : "no");

    // The raw disk: the host checks these bytes after the VM stops.
    {
        const int fd = ::open(disk, O_WRONLY | O_DIRECT);
        auto buf = host_buffer(kLen);
        fill_pattern_fast(buf.get(), kLen, 0, 1);
        if (fd < 0 || ::pwrite(fd, buf.get(), kLen, 0) != static_cast<ssize_t>(kLen))
            return fail("writing the disk");
        ::close(fd);
    }
    int rc = read_into_device("raw NVMe -> device memory:", disk, 0, 1);
    hostcheck_bar(0, 0, kLen);

    // A file on ext4, written through the page cache, then dropped from it.
    if (fs) {
        const std::string path = std::string(fs) + "/demo.dat";
        make_pattern_file(path, kLen, 2);
        std::ofstream("/proc/sys/vm/drop_caches") << "3";
        rc |= read_into_device("ext4 file -> device memory:", path.c_str(), 128 << 20, 2);
    }
    std::printf("module counters: maps %s unmaps %s mapped_total %s bytes\n", sysfs("maps").c_str(),
                sysfs("unmaps").c_str(), sysfs("mapped_total").c_str());
    phxfs_close(0);
    return rc;
}

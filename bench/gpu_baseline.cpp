// gpu_baseline: one phxfs_read of a whole cached file into cudaMalloc memory,
// beside the pinned host-to-device copy rate measured in the same run (the
// physical limit for any path through host memory), and the reverse for
// phxfs_write.
//
//   gpu_baseline FILE [GiB]     (creates FILE of GiB, default 4, if missing)
#include <phxfs/phxfs.h>

#include <cuda_runtime.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

double now() {
    using namespace std::chrono;
    return duration<double>(steady_clock::now().time_since_epoch()).count();
}

void check(bool ok, const char *what) {
    if (!ok) {
        std::fprintf(stderr, "gpu_baseline: %s failed: %s\n", what, phxfs_last_error());
        std::exit(1);
    }
}

// Host-to-device (or back) from pinned memory in 64 MiB copies, GB/s.
double copy_rate(void *gpu, size_t bytes, bool to_device) {
    constexpr size_t kChunk = 64 << 20;
    void *pinned = nullptr;
    check(cudaMallocHost(&pinned, kChunk) == cudaSuccess, "cudaMallocHost");
    std::memset(pinned, 1, kChunk);
    double best = 0;
    for (int rep = 0; rep < 3; ++rep) {
        const double t0 = now();
        for (size_t off = 0; off < bytes; off += kChunk) {
            char *d = static_cast<char *>(gpu) + off;
            if (to_device)
                cudaMemcpyAsync(d, pinned, kChunk, cudaMemcpyHostToDevice);
            else
                cudaMemcpyAsync(pinned, d, kChunk, cudaMemcpyDeviceToHost);
        }
        cudaDeviceSynchronize();
        best = std::max(best, bytes / (now() - t0) / 1e9);
    }
    cudaFreeHost(pinned);
    return best;
}

void make_file(const char *path, size_t bytes) {
    struct stat st {};
    if (stat(path, &st) == 0 && static_cast<size_t>(st.st_size) >= bytes)
        return;
    const int fd = open(path, O_CREAT | O_WRONLY, 0644);
    check(fd >= 0, "open for create");
    std::vector<char> buf(64 << 20, 'p');
    for (size_t off = 0; off < bytes; off += buf.size())
        check(pwrite(fd, buf.data(), buf.size(), off) == static_cast<ssize_t>(buf.size()),
              "pwrite");
    close(fd);
}

} // namespace

int main(int argc, char **argv) {
    if (argc < 2) {
        std::fprintf(stderr, "usage: %s FILE [GiB]\n", argv[0]);
        return 2;
    }
    const size_t bytes = (argc > 2 ? std::strtoull(argv[2], nullptr, 10) : 4) << 30;
    make_file(argv[1], bytes);

    void *gpu = nullptr;
    check(cudaMalloc(&gpu, bytes) == cudaSuccess, "cudaMalloc");
    const double h2d = copy_rate(gpu, bytes, true);
    const double d2h = copy_rate(gpu, bytes, false);

    check(phxfs_open(0) == 0, "phxfs_open");
    void *target = nullptr;
    check(phxfs_regmem(0, gpu, bytes, &target) == 0, "phxfs_regmem");
    const int fd = open(argv[1], O_RDWR);
    check(fd >= 0, "open");
    const phxfs_fileid_t fid{fd, 0};

    double best_read = 0;
    for (int rep = 0; rep < 4; ++rep) { // the first run also warms the page cache
        const double t0 = now();
        check(phxfs_read(fid, gpu, 0, bytes, 0) == static_cast<ssize_t>(bytes), "phxfs_read");
        if (rep > 0)
            best_read = std::max(best_read, bytes / (now() - t0) / 1e9);
    }
    const double t0 = now();
    check(phxfs_write(fid, gpu, 0, bytes, 0) == static_cast<ssize_t>(bytes), "phxfs_write");
    const double write = bytes / (now() - t0) / 1e9;

    phxfs_config cfg{};
    cfg.size = sizeof cfg;
    phxfs_get_config(&cfg);
    std::printf("file %s, %zu GiB, one call each, threads %u, chunk %llu KiB\n", argv[1],
                bytes >> 30, cfg.threads, static_cast<unsigned long long>(cfg.chunk_bytes >> 10));
    std::printf("pinned H2D copy (64 MiB chunks):   %6.1f GB/s\n", h2d);
    std::printf("phxfs_read, cached file -> GPU:    %6.1f GB/s  (%.2f of H2D)\n", best_read,
                best_read / h2d);
    std::printf("pinned D2H copy (64 MiB chunks):   %6.1f GB/s\n", d2h);
    std::printf("phxfs_write, GPU -> file (1 run):  %6.1f GB/s\n", write);

    phxfs_deregmem(0, gpu, bytes);
    phxfs_close(0);
    cudaFree(gpu);
    close(fd);
    return 0;
}

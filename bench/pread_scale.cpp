// pread_scale: the host side's ceiling for the compat path. N threads read
// random blocks of a cached file with pread into pinned memory (the staging
// the compat path reads into), alone and while another thread streams pinned
// memory to the GPU at the copy limit (the DMA the compat path's copies
// make), so that what the page cache and the memory bus give a given piece
// size is known apart from the library.
//
//   pread_scale FILE [KiB [SECONDS]]   (FILE: cached, at least 1 GiB; KiB:
//                                       the piece size, default 64; 1 s a row)
//
// Prints one markdown row per thread count (1, 2, 4, 8, 12, 16): GB/s of
// preads alone, GB/s of preads beside the copies, and the copies' GB/s.
#include <cuda_runtime.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <thread>
#include <vector>

namespace {

[[noreturn]] void die(const char *what) {
    std::fprintf(stderr, "pread_scale: %s\n", what);
    std::exit(1);
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// threads threads read random pieces for secs; GB/s of all of them.
double preads(int fd, size_t file_bytes, size_t piece, unsigned threads, double secs,
              std::vector<char *> &bufs) {
    constexpr size_t kPerBuffer = 4 << 20;
    std::atomic<uint64_t> bytes{0};
    std::atomic<bool> stop{false};
    std::vector<std::thread> ts;
    const auto t0 = std::chrono::steady_clock::now();
    for (unsigned t = 0; t < threads; ++t) {
        ts.emplace_back([&, t] {
            std::mt19937_64 rng(t + 1);
            const size_t slots = file_bytes / piece;
            uint64_t mine = 0;
            for (size_t at = 0; !stop.load(std::memory_order_relaxed); at += piece) {
                if (at + piece > kPerBuffer)
                    at = 0;
                const ssize_t got =
                    ::pread(fd, bufs[t] + at, piece, static_cast<off_t>((rng() % slots) * piece));
                if (got != static_cast<ssize_t>(piece))
                    die("pread came short");
                mine += piece;
            }
            bytes += mine;
        });
    }
    std::this_thread::sleep_for(std::chrono::duration<double>(secs));
    stop = true;
    for (auto &t : ts)
        t.join();
    return bytes.load() / seconds_since(t0) / 1e9;
}

} // namespace

int main(int argc, char **argv) {
    if (argc < 2)
        die("usage: pread_scale FILE [KiB [SECONDS]]");
    const size_t piece = (argc > 2 ? std::strtoull(argv[2], nullptr, 10) : 64) << 10;
    const double secs = argc > 3 ? std::atof(argv[3]) : 1.0;
    const int fd = ::open(argv[1], O_RDONLY);
    struct stat st {};
    if (fd < 0 || ::fstat(fd, &st) != 0 || st.st_size < (1 << 30))
        die("FILE must exist and hold at least 1 GiB");
    if (piece == 0 || piece > (4u << 20))
        die("KiB must be within 1..4096");
    const size_t file_bytes = static_cast<size_t>(st.st_size);

    constexpr unsigned kMaxThreads = 16;
    std::vector<char *> bufs(kMaxThreads);
    for (auto &b : bufs)
        if (cudaMallocHost(reinterpret_cast<void **>(&b), 4 << 20) != cudaSuccess)
            die("cudaMallocHost");
    constexpr size_t kCopy = 64 << 20;
    void *src = nullptr, *dst = nullptr;
    cudaStream_t s{};
    if (cudaMallocHost(&src, kCopy) != cudaSuccess || cudaMalloc(&dst, kCopy) != cudaSuccess ||
        cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking) != cudaSuccess)
        die("CUDA setup");
    preads(fd, file_bytes, piece, kMaxThreads, 0.5, bufs); // warm the page cache's lookups

    std::printf(
        "| threads | %zu KiB preads alone, GB/s | beside H2D copies, GB/s | copies, GB/s |\n",
        piece >> 10);
    std::printf("| ---: | ---: | ---: | ---: |\n");
    for (unsigned threads : {1u, 2u, 4u, 8u, 12u, 16u}) {
        const double alone = preads(fd, file_bytes, piece, threads, secs, bufs);
        std::atomic<bool> stop{false};
        std::atomic<uint64_t> copied{0};
        std::thread copier([&] {
            while (!stop.load()) {
                cudaMemcpyAsync(dst, src, kCopy, cudaMemcpyHostToDevice, s);
                cudaStreamSynchronize(s);
                copied += kCopy;
            }
        });
        const auto t0 = std::chrono::steady_clock::now();
        const double beside = preads(fd, file_bytes, piece, threads, secs, bufs);
        stop = true;
        copier.join();
        const double copy = copied.load() / seconds_since(t0) / 1e9;
        std::printf("| %u | %.1f | %.1f | %.1f |\n", threads, alone, beside, copy);
        std::fflush(stdout);
    }
    return 0;
}

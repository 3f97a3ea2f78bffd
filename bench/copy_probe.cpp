// copy_probe: what a GPU's copy engines make of pinned staging, by how it
// was waited for and by how it was written (the report of 2026-12-06,
// session 5, bench/results/2026-12-06-h100-session5.md).
//
//   copy_probe scale   T threads (1..16), each with its own stream and pinned
//                      buffer of 256 KiB, 1 MiB or 4 MiB, copying it to the
//                      GPU over and over for 0.4 s, waited for by
//                      cudaStreamSynchronize, by polling cudaStreamQuery (with
//                      or without a 5 us breath), or by polling a host word
//                      the stream writes (cuStreamWriteValue32); and one
//                      256 MiB copy, the limit. Aggregate GB/s.
//   copy_probe dirty   T threads (1, 8, 16), each writing its 1 or 4 MiB
//                      buffer before each copy, as a pread from the page
//                      cache writes staging: not at all, memset, memset and
//                      clflushopt or clwb of each line, non-temporal stores.
//                      Mean time of each phase, and GB/s of the whole loop.
#include <cuda.h>
#include <cuda_runtime.h>
#include <immintrin.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <thread>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

void check(int err, const char *what) {
    if (err) {
        std::fprintf(stderr, "copy_probe: %s failed (%d)\n", what, err);
        std::exit(1);
    }
}
#define CK(call) check(static_cast<int>(call), #call)

// T threads, each with a pinned buffer of `size` bytes, a device buffer and
// a stream, running one(i, host, dev, stream) until 0.4 s have passed;
// returns the seconds taken.
double run_threads(int threads, size_t size,
                   const std::function<void(int, char *, void *, cudaStream_t)> &one,
                   std::atomic<bool> &stop) {
    std::vector<char *> host(threads);
    std::vector<void *> dev(threads);
    std::vector<cudaStream_t> streams(threads);
    for (int i = 0; i < threads; ++i) {
        CK(cudaHostAlloc(reinterpret_cast<void **>(&host[i]), size, cudaHostAllocPortable));
        std::memset(host[i], i, size);
        CK(cudaMalloc(&dev[i], size));
        CK(cudaStreamCreateWithFlags(&streams[i], cudaStreamNonBlocking));
    }
    stop = false;
    std::vector<std::thread> ts;
    const auto t0 = Clock::now();
    for (int i = 0; i < threads; ++i)
        ts.emplace_back([&, i] {
            CK(cudaSetDevice(0));
            one(i, host[i], dev[i], streams[i]);
        });
    std::this_thread::sleep_for(std::chrono::milliseconds(400));
    stop = true;
    for (auto &t : ts)
        t.join();
    const double s = std::chrono::duration<double>(Clock::now() - t0).count();
    for (int i = 0; i < threads; ++i) {
        CK(cudaFreeHost(host[i]));
        CK(cudaFree(dev[i]));
        CK(cudaStreamDestroy(streams[i]));
    }
    return s;
}

void scale() {
    CUcontext ctx = nullptr;
    CK(cuCtxGetCurrent(&ctx));
    const char *waits[] = {"sync", "query", "query+5us", "host word"};
    for (size_t size : {size_t{256} << 10, size_t{1} << 20, size_t{4} << 20}) {
        for (int wait = 0; wait < 4; ++wait) {
            std::printf("%5zu KiB %-10s", size >> 10, waits[wait]);
            for (int threads : {1, 2, 4, 8, 16}) {
                uint32_t *words = nullptr; // one per thread, 64 bytes apart
                CK(cudaHostAlloc(reinterpret_cast<void **>(&words), 4096, cudaHostAllocMapped));
                std::memset(words, 0, 4096);
                std::atomic<bool> stop{false};
                std::atomic<uint64_t> bytes{0};
                const double s = run_threads(
                    threads, size,
                    [&](int i, char *host, void *dev, cudaStream_t st) {
                        CK(cuCtxSetCurrent(ctx));
                        volatile uint32_t *word = words + 16 * i;
                        CUdeviceptr word_dev = 0;
                        CK(cuMemHostGetDevicePointer(&word_dev, const_cast<uint32_t *>(word), 0));
                        uint64_t moved = 0;
                        for (uint32_t gen = 1; !stop.load(std::memory_order_relaxed); ++gen) {
                            CK(cudaMemcpyAsync(dev, host, size, cudaMemcpyHostToDevice, st));
                            if (wait == 0) {
                                CK(cudaStreamSynchronize(st));
                            } else if (wait == 3) {
                                CK(cuStreamWriteValue32(reinterpret_cast<CUstream>(st), word_dev,
                                                        gen, 0));
                                while (*word != gen)
                                    _mm_pause();
                            } else {
                                for (cudaError_t r; (r = cudaStreamQuery(st)) != cudaSuccess;) {
                                    if (r != cudaErrorNotReady)
                                        check(r, "cudaStreamQuery");
                                    const auto until =
                                        Clock::now() + std::chrono::microseconds(wait == 2 ? 5 : 0);
                                    do
                                        _mm_pause();
                                    while (Clock::now() < until);
                                }
                            }
                            moved += size;
                        }
                        bytes += moved;
                    },
                    stop);
                CK(cudaFreeHost(words));
                std::printf("  T%-2d %5.1f", threads, static_cast<double>(bytes) / s / 1e9);
                std::fflush(stdout);
            }
            std::printf("  GB/s\n");
        }
    }
    const size_t big = size_t{256} << 20;
    void *host = nullptr, *dev = nullptr;
    CK(cudaHostAlloc(&host, big, 0));
    CK(cudaMalloc(&dev, big));
    std::memset(host, 1, big);
    for (int rep = 0; rep < 3; ++rep) {
        const auto t0 = Clock::now();
        CK(cudaMemcpy(dev, host, big, cudaMemcpyHostToDevice));
        const double s = std::chrono::duration<double>(Clock::now() - t0).count();
        std::printf("one 256 MiB copy: %.1f GB/s\n", static_cast<double>(big) / s / 1e9);
    }
    CK(cudaFreeHost(host));
    CK(cudaFree(dev));
}

enum class Write { none, memset, clflushopt, clwb, nontemporal };

__attribute__((target("clflushopt,clwb,avx2"))) void write_buffer(char *p, size_t n, Write how,
                                                                  int v) {
    switch (how) {
    case Write::none:
        return;
    case Write::nontemporal: {
        const __m256i x = _mm256_set1_epi8(static_cast<char>(v));
        for (size_t i = 0; i < n; i += 32)
            _mm256_stream_si256(reinterpret_cast<__m256i *>(p + i), x);
        _mm_sfence();
        return;
    }
    case Write::memset:
    case Write::clflushopt:
    case Write::clwb:
        std::memset(p, v, n);
        break;
    }
    if (how == Write::clflushopt)
        for (size_t i = 0; i < n; i += 64)
            _mm_clflushopt(p + i);
    if (how == Write::clwb)
        for (size_t i = 0; i < n; i += 64)
            _mm_clwb(p + i);
    _mm_sfence();
}

void dirty() {
    const std::pair<Write, const char *> writes[] = {{Write::none, "clean"},
                                                     {Write::memset, "memset"},
                                                     {Write::clflushopt, "memset+clflushopt"},
                                                     {Write::nontemporal, "non-temporal"},
                                                     {Write::clwb, "memset+clwb"}};
    for (size_t size : {size_t{1} << 20, size_t{4} << 20})
        for (const auto &[how, name] : writes)
            for (int threads : {1, 8, 16}) {
                std::atomic<bool> stop{false};
                std::atomic<uint64_t> write_ns{0}, copy_ns{0}, rounds{0};
                const double s = run_threads(
                    threads, size,
                    [&](int, char *host, void *dev, cudaStream_t st) {
                        uint64_t w = 0, c = 0, k = 0;
                        for (; !stop.load(std::memory_order_relaxed); ++k) {
                            const auto a = Clock::now();
                            write_buffer(host, size, how, static_cast<int>(k));
                            const auto b = Clock::now();
                            CK(cudaMemcpyAsync(dev, host, size, cudaMemcpyHostToDevice, st));
                            CK(cudaStreamSynchronize(st));
                            const auto e = Clock::now();
                            w += static_cast<uint64_t>((b - a).count());
                            c += static_cast<uint64_t>((e - b).count());
                        }
                        write_ns += w;
                        copy_ns += c;
                        rounds += k;
                    },
                    stop);
                const double n = static_cast<double>(rounds.load());
                std::printf("%4zu KiB %-18s T%-2d write %7.1f us  copy %7.1f us  loop %5.1f GB/s\n",
                            size >> 10, name, threads, static_cast<double>(write_ns) / 1e3 / n,
                            static_cast<double>(copy_ns) / 1e3 / n,
                            n * static_cast<double>(size) / s / 1e9);
                std::fflush(stdout);
            }
}

} // namespace

int main(int argc, char **argv) {
    const std::string what = argc > 1 ? argv[1] : "";
    if (what != "scale" && what != "dirty") {
        std::fprintf(stderr, "usage: copy_probe scale|dirty\n");
        return 2;
    }
    CK(cudaSetDevice(0));
    CK(cudaFree(nullptr));
    what == "scale" ? scale() : dirty();
    return 0;
}

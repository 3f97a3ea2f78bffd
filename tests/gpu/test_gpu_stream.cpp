// Stream-ordered I/O on a real GPU (phxfs_file_read_stream/write_stream):
// kernels queued before a request set its size and offsets (values read at
// execution time), kernels queued after it check the bytes and its result
// (stream order), 4 KiB to 9 MiB, 8 streams from 8 threads at once, the
// synchronous API from another thread at the same time, failing requests.
// Every wait for a stream has a deadline (watchdog): a deadlock ends the
// program with a message instead of hanging it. Run: ctest -L gpu -R stream.
#include "gpu_test.hpp"
#include "stream_kernels.hpp"

#include <cuda_runtime.h>

#include <phxfs/phxfs.h>

#include <chrono>
#include <cstdio>
#include <future>
#include <thread>
#include <vector>

using namespace phxtest;
namespace kern = phxtest::gpu;

namespace {

using namespace std::chrono_literals;

#define CUDA_OK(call) ASSERT_EQ((call), cudaSuccess) << #call

// A request's parameters in pinned host memory mapped for the GPU, one
// cache line each (kernels set and read them).
struct alignas(128) Params {
    size_t size;
    off_t f_off, b_off;
    ssize_t result;
    int flag;
};
constexpr ssize_t kUnset = -123456;

// Waits for s with a deadline. A stream still busy then is a deadlock (or
// something as bad): say so and end the program, since nothing can release
// the stream and tearing down CUDA would wait for it.
void finish(cudaStream_t s, std::chrono::seconds limit, const char *what) {
    const auto deadline = std::chrono::steady_clock::now() + limit;
    for (;;) {
        const cudaError_t e = cudaStreamQuery(s);
        if (e == cudaSuccess)
            return;
        if (e != cudaErrorNotReady) {
            ADD_FAILURE() << what << ": " << cudaGetErrorString(e);
            return;
        }
        if (std::chrono::steady_clock::now() > deadline) {
            std::fprintf(stderr,
                         "WATCHDOG: %s: the stream did not finish within %lld s; stream-ordered "
                         "I/O deadlocked (last error: %s)\n",
                         what, static_cast<long long>(limit.count()), phxfs_last_error());
            std::fflush(stderr);
            std::_Exit(3);
        }
        std::this_thread::sleep_for(1ms);
    }
}

ssize_t volatile_result(const Params &p) {
    return *const_cast<const volatile ssize_t *>(&p.result);
}

class GpuStream : public GpuTest {
  protected:
    void SetUp() override {
        GpuTest::SetUp();
        if (IsSkipped() || HasFatalFailure())
            return;
        CUDA_OK(cudaSetDevice(0));
        path_ = dir_.file("gpu-stream");
        make_pattern_file(path_, kFile);
        fd_ = ::open(path_.c_str(), O_RDWR);
        ASSERT_GE(fd_, 0);
        ASSERT_EQ(phxfs_file_open(&fh_, 0, fd_), 0) << phxfs_last_error();
        CUDA_OK(cudaMalloc(&buf_, kBuf));
        CUDA_OK(cudaMalloc(&bad_, 64 * sizeof(int)));
        CUDA_OK(cudaMemset(bad_, 0, 64 * sizeof(int)));
        CUDA_OK(cudaHostAlloc(&params_, kParams * sizeof(Params), cudaHostAllocMapped));
        for (size_t i = 0; i < kParams; ++i)
            params_[i] = Params{0, 0, 0, kUnset, 0};
        CUDA_OK(cudaStreamCreateWithFlags(&s_, cudaStreamNonBlocking));
        CUDA_OK(cudaDeviceSynchronize());
    }
    void TearDown() override {
        if (s_) {
            finish(s_, 60s, "teardown");
            cudaStreamDestroy(s_);
        }
        if (params_)
            cudaFreeHost(params_);
        if (bad_)
            cudaFree(bad_);
        if (buf_)
            cudaFree(buf_);
        if (fh_)
            phxfs_file_close(fh_);
        if (fd_ >= 0)
            ::close(fd_);
        GpuTest::TearDown();
    }
    std::vector<uint8_t> from_gpu(size_t off, size_t n) {
        std::vector<uint8_t> h(n);
        EXPECT_EQ(cudaMemcpy(h.data(), buf_ + off, n, cudaMemcpyDeviceToHost), cudaSuccess);
        return h;
    }
    std::vector<uint8_t> from_file(uint64_t off, size_t n) {
        std::vector<uint8_t> h(n);
        EXPECT_EQ(::pread(fd_, h.data(), n, static_cast<off_t>(off)), static_cast<ssize_t>(n));
        return h;
    }

    static constexpr uint64_t kFile = 40 << 20;
    static constexpr size_t kBuf = 64 << 20;
    static constexpr size_t kParams = 1024;
    std::string path_;
    int fd_ = -1;
    phxfs_file_t fh_ = nullptr;
    uint8_t *buf_ = nullptr;
    int *bad_ = nullptr;
    Params *params_ = nullptr;
    cudaStream_t s_ = nullptr;
};

struct Case {
    size_t n;
    off_t f_off, b_off;
};
// 4 KiB aligned, 4 MiB unaligned, and 9 MiB + 5 (three rounds of 4 MiB).
const Case kCases[] = {{4096, 8192, 0}, {4 << 20, 12345, 3}, {(9 << 20) + 5, 4097, 17}};

TEST_F(GpuStream, ReadRunsInStreamOrderWithValuesReadAtExecutionTime) {
    for (const Case &c : kCases) {
        Params &p = params_[0];
        p = Params{c.n + 4096, 0, 0, kUnset, 0}; // at enqueue: the most, and wrong offsets
        kern::busy(s_, 20000);                   // the read must not run before this
        kern::fill(s_, buf_, c.b_off + c.n + 64, 0xAA);
        kern::set_params(s_, &p.size, c.n, &p.f_off, c.f_off, &p.b_off, c.b_off);
        ASSERT_EQ(phxfs_file_read_stream(fh_, buf_, &p.size, &p.f_off, &p.b_off, &p.result, s_), 0)
            << phxfs_last_error();
        kern::check(s_, buf_ + c.b_off, c.n, static_cast<uint64_t>(c.f_off), 1, &p.result,
                    static_cast<ssize_t>(c.n), &p.flag, bad_);
        EXPECT_EQ(volatile_result(p), kUnset) << "the enqueue waited for the stream";
        finish(s_, 60s, "read");
        EXPECT_EQ(p.result, static_cast<ssize_t>(c.n)) << "n " << c.n;
        EXPECT_EQ(p.flag, 1) << "the kernel after the read saw "
                             << (p.flag == 2 ? "wrong bytes" : "a wrong result") << ", n " << c.n;
        auto h = from_gpu(0, c.b_off + c.n + 1);
        EXPECT_EQ(first_mismatch_fast(h.data() + c.b_off, c.n, static_cast<uint64_t>(c.f_off)),
                  c.n);
        if (c.b_off) {
            EXPECT_EQ(h[c.b_off - 1], 0xAA) << "wrote before the buffer offset";
        }
        EXPECT_EQ(h[c.b_off + c.n], 0xAA) << "wrote past the size";
    }
}

TEST_F(GpuStream, WriteRunsInStreamOrderWithValuesReadAtExecutionTime) {
    uint64_t seed = 5;
    for (const Case &c : kCases) {
        Params &p = params_[1];
        const auto f_off = static_cast<uint64_t>(c.f_off) + (8 << 20);
        p = Params{c.n, 0, 0, kUnset, 0};
        kern::busy(s_, 20000);
        // The bytes to write are those a kernel queued before leaves there.
        kern::fill_pattern(s_, buf_ + c.b_off, c.n, f_off, seed);
        kern::set_params(s_, &p.size, c.n, &p.f_off, static_cast<off_t>(f_off), &p.b_off, c.b_off);
        ASSERT_EQ(phxfs_file_write_stream(fh_, buf_, &p.size, &p.f_off, &p.b_off, &p.result, s_), 0)
            << phxfs_last_error();
        // Overwritten right after: the write must have copied them already.
        kern::fill(s_, buf_, c.b_off + c.n, 0x55);
        kern::check(s_, nullptr, 0, 0, 0, &p.result, static_cast<ssize_t>(c.n), &p.flag, bad_);
        EXPECT_EQ(volatile_result(p), kUnset) << "the enqueue waited for the stream";
        finish(s_, 60s, "write");
        EXPECT_EQ(p.result, static_cast<ssize_t>(c.n));
        EXPECT_EQ(p.flag, 1) << "the result was not there when the stream went on";
        auto h = from_file(f_off, c.n);
        EXPECT_EQ(first_mismatch_fast(h.data(), c.n, f_off, seed), c.n) << "n " << c.n;
        ++seed;
    }
}

TEST_F(GpuStream, EightStreamsWith64RequestsEachAtOnce) {
    constexpr unsigned kStreams = 8, kPer = 64;
    constexpr size_t kN = 64 << 10;
    std::vector<std::thread> threads;
    std::atomic<unsigned> refused{0};
    for (unsigned t = 0; t < kStreams; ++t) {
        threads.emplace_back([&, t] {
            cudaSetDevice(0);
            cudaStream_t s = nullptr;
            if (cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking) != cudaSuccess) {
                ++refused;
                return;
            }
            for (unsigned i = 0; i < kPer; ++i) {
                Params &p = params_[t * kPer + i];
                p = Params{kN, static_cast<off_t>((t * kPer + i) * kN + t),
                           static_cast<off_t>((t * kPer + i) * kN), kUnset, 0};
                if (i % 8 == 0)
                    kern::busy(s, 50);
                if (phxfs_file_read_stream(fh_, buf_, &p.size, &p.f_off, &p.b_off, &p.result, s))
                    ++refused;
            }
            finish(s, 120s, "8 streams");
            cudaStreamDestroy(s);
        });
    }
    for (auto &th : threads)
        th.join();
    EXPECT_EQ(refused, 0u) << phxfs_last_error();
    auto h = from_gpu(0, kStreams * kPer * kN);
    for (unsigned t = 0; t < kStreams; ++t)
        for (unsigned i = 0; i < kPer; ++i) {
            const Params &p = params_[t * kPer + i];
            ASSERT_EQ(p.result, static_cast<ssize_t>(kN)) << t << "/" << i;
            ASSERT_EQ(first_mismatch_fast(h.data() + p.b_off, kN, static_cast<uint64_t>(p.f_off)),
                      kN)
                << t << "/" << i;
        }
}

TEST_F(GpuStream, InterleavesWithTheSynchronousApiFromAnotherThread) {
    // The library's own streams (the synchronous API's copies) share the
    // GPU's hardware queues with the caller's stream, which waits on the
    // library: the request that deadlocked before (c83fc5b).
    uint8_t *other = nullptr;
    CUDA_OK(cudaMalloc(&other, 8 << 20));
    std::atomic<bool> stop{false};
    auto sync_io = std::async(std::launch::async, [&] {
        cudaSetDevice(0);
        unsigned runs = 0;
        while (!stop || runs < 50) {
            const off_t off = static_cast<off_t>((runs % 16) << 20);
            if (phxfs_file_read(fh_, other, 0, 4 << 20, off) != (4 << 20))
                return -1;
            ++runs;
        }
        return static_cast<int>(runs);
    });
    constexpr unsigned kN = 200;
    constexpr size_t kSize = 256 << 10;
    for (unsigned i = 0; i < kN; ++i) {
        Params &p = params_[i];
        p = Params{kSize, static_cast<off_t>(i * 4096 + 1), static_cast<off_t>((i % 64) * kSize),
                   kUnset, 0};
        kern::busy(s_, 100);
        ASSERT_EQ(phxfs_file_read_stream(fh_, buf_, &p.size, &p.f_off, &p.b_off, &p.result, s_), 0)
            << phxfs_last_error();
        kern::check(s_, buf_ + p.b_off, kSize, static_cast<uint64_t>(p.f_off), 1, &p.result,
                    static_cast<ssize_t>(kSize), &p.flag, bad_);
    }
    finish(s_, 120s, "stream requests beside synchronous reads");
    stop = true;
    if (sync_io.wait_for(120s) != std::future_status::ready) {
        std::fprintf(stderr, "WATCHDOG: the synchronous reads beside stream requests hung\n");
        std::_Exit(3);
    }
    EXPECT_GE(sync_io.get(), 50);
    for (unsigned i = 0; i < kN; ++i) {
        ASSERT_EQ(params_[i].result, static_cast<ssize_t>(kSize)) << i;
        ASSERT_EQ(params_[i].flag, 1) << i;
    }
    cudaFree(other);
}

TEST_F(GpuStream, FailingRequestsReportErrnoAndTheStreamGoesOn) {
    phxfs_file_t fh2 = nullptr;
    ASSERT_EQ(phxfs_file_open(&fh2, 0, fd_), 0);
    Params *p = params_;
    p[0] = Params{4096, 0, 0, kUnset, 0}; // a kernel sets a negative offset
    p[1] = Params{4096, 0, 0, kUnset, 0}; // a kernel grows the size past the most
    p[2] = Params{4096, 0, 0, kUnset, 0}; // its handle is closed before the stream gets there
    p[3] = Params{4096, off_t{1} << 62, 0, kUnset, 0}; // a write beyond the largest file
    p[4] = Params{4096, 4096, 0, kUnset, 0};           // fine
    kern::busy(s_, 50000);
    kern::set_params(s_, &p[0].size, 4096, &p[0].f_off, -1, nullptr, 0);
    ASSERT_EQ(phxfs_file_read_stream(fh_, buf_, &p[0].size, &p[0].f_off, nullptr, &p[0].result, s_),
              0);
    kern::set_params(s_, &p[1].size, 8192, &p[1].f_off, 0, nullptr, 0);
    ASSERT_EQ(phxfs_file_read_stream(fh_, buf_, &p[1].size, &p[1].f_off, nullptr, &p[1].result, s_),
              0);
    ASSERT_EQ(phxfs_file_read_stream(fh2, buf_, &p[2].size, &p[2].f_off, nullptr, &p[2].result, s_),
              0);
    ASSERT_EQ(
        phxfs_file_write_stream(fh_, buf_, &p[3].size, &p[3].f_off, nullptr, &p[3].result, s_), 0);
    ASSERT_EQ(phxfs_file_read_stream(fh_, buf_, &p[4].size, &p[4].f_off, nullptr, &p[4].result, s_),
              0);
    kern::check(s_, buf_, 4096, 4096, 1, &p[4].result, 4096, &p[4].flag, bad_);
    // Close returns at once: the request not yet reached holds nothing.
    const auto t0 = std::chrono::steady_clock::now();
    ASSERT_EQ(phxfs_file_close(fh2), 0);
    EXPECT_LT(std::chrono::steady_clock::now() - t0, 20ms);
    finish(s_, 60s, "failing requests");
    EXPECT_EQ(p[0].result, -EINVAL);
    EXPECT_EQ(p[1].result, -EINVAL);
    EXPECT_EQ(p[2].result, -EBADF);
    EXPECT_LT(p[3].result, 0);
    EXPECT_TRUE(p[3].result == -EFBIG || p[3].result == -EINVAL) << p[3].result;
    EXPECT_EQ(p[4].result, 4096);
    EXPECT_EQ(p[4].flag, 1);
}

TEST_F(GpuStream, EnqueueErrors) {
    size_t size = 4096;
    off_t off = 0;
    ssize_t result = kUnset;
    EXPECT_EQ(phxfs_file_read_stream(fh_, buf_, nullptr, &off, nullptr, &result, s_), -1);
    EXPECT_EQ(errno, EINVAL);
    EXPECT_EQ(phxfs_file_read_stream(fh_, buf_, &size, &off, nullptr, nullptr, s_), -1);
    EXPECT_EQ(errno, EINVAL);
    EXPECT_EQ(phxfs_file_read_stream(reinterpret_cast<phxfs_file_t>(uintptr_t{99999}), buf_, &size,
                                     &off, nullptr, &result, s_),
              -1);
    EXPECT_EQ(errno, EBADF);
    EXPECT_EQ(phxfs_stream_register(s_, 1), -1);
    EXPECT_EQ(errno, EINVAL);
    finish(s_, 10s, "nothing queued");
    EXPECT_EQ(result, kUnset);
}

TEST_F(GpuStream, DefaultStreamAndRegister) {
    ASSERT_EQ(phxfs_stream_register(s_, 0), 0) << phxfs_last_error();
    ASSERT_EQ(phxfs_stream_register(nullptr, 0), 0) << phxfs_last_error();
    Params &p = params_[0];
    p = Params{1 << 20, 777, 5, kUnset, 0};
    cudaStream_t legacy = nullptr; // the legacy default stream of the current context
    kern::fill(legacy, buf_, (1 << 20) + 64, 0xAA);
    ASSERT_EQ(phxfs_file_read_stream(fh_, buf_, &p.size, &p.f_off, &p.b_off, &p.result, legacy), 0)
        << phxfs_last_error();
    kern::check(legacy, buf_ + 5, 1 << 20, 777, 1, &p.result, 1 << 20, &p.flag, bad_);
    finish(legacy, 60s, "legacy default stream");
    EXPECT_EQ(p.result, 1 << 20);
    EXPECT_EQ(p.flag, 1);
}

TEST_F(GpuStream, ThroughputOfSmallAndLargeRequests) {
    // Not a pass/fail number: what one stream of back-to-back requests
    // moves, for the record (phxfs-bench --stream measures it properly).
    for (size_t n : {size_t{4096}, size_t{4} << 20}) {
        const unsigned count = n == 4096 ? 1000 : 12;
        const auto t0 = std::chrono::steady_clock::now();
        for (unsigned i = 0; i < count; ++i) {
            Params &p = params_[i % kParams];
            p = Params{n, static_cast<off_t>((i * n) % (32 << 20)), 0, kUnset, 0};
            int rc;
            while ((rc = phxfs_file_read_stream(fh_, buf_, &p.size, &p.f_off, nullptr, &p.result,
                                                s_)) < 0 &&
                   errno == EAGAIN)
                finish(s_, 60s, "throughput");
            ASSERT_EQ(rc, 0) << phxfs_last_error();
        }
        finish(s_, 60s, "throughput");
        const double s =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        std::printf("stream reads of %zu B: %.0f IOPS, %.2f GB/s\n", n, count / s,
                    count * double(n) / s / 1e9);
    }
}

} // namespace

// phxfs-bench --stream N: N stream-ordered requests (phxfs_file_read_stream
// or _write_stream) of the I/O size enqueued on one CUDA stream, then one
// cuStreamSynchronize; throughput and IOPS of the whole. The stream comes
// from the CUDA driver loaded at run time, as the rest of the tool does.
#include "stream.hpp"

#include "memory.hpp"

#include <phxfs/phxfs.hpp>

#include <dlfcn.h>
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

namespace phxbench {

namespace {

// The few driver calls a stream needs, from the driver the tools load (no
// CUDA headers needed: the tool builds without the toolkit).
using CUresult = int;
using CUdevice = int;
using CUcontext = void *;
using CUstream = void *;
constexpr CUresult CUDA_SUCCESS = 0;
constexpr unsigned CU_STREAM_NON_BLOCKING = 1;

struct StreamApi {
    CUresult (*retain)(CUcontext *, CUdevice) = nullptr;
    CUresult (*set_current)(CUcontext) = nullptr;
    CUresult (*create)(CUstream *, unsigned) = nullptr;
    CUresult (*sync)(CUstream) = nullptr;
    CUresult (*destroy)(CUstream) = nullptr;
    CUresult (*device_get)(CUdevice *, int) = nullptr;

    template <typename F> static void load(void *h, F &f, const char *name) {
        f = reinterpret_cast<F>(dlsym(h, name));
        if (!f)
            throw std::runtime_error(std::string("--stream: the CUDA driver lacks ") + name);
    }
    StreamApi() {
        void *h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
        if (!h)
            throw std::runtime_error("--stream needs a CUDA driver (libcuda.so.1)");
        load(h, retain, "cuDevicePrimaryCtxRetain");
        load(h, set_current, "cuCtxSetCurrent");
        load(h, create, "cuStreamCreate");
        load(h, sync, "cuStreamSynchronize");
        load(h, destroy, "cuStreamDestroy_v2");
        load(h, device_get, "cuDeviceGet");
    }
};

void cu(CUresult r, const char *what) {
    if (r != CUDA_SUCCESS)
        throw std::runtime_error(std::string(what) + " failed (" + std::to_string(r) + ")");
}

} // namespace

RunResult run_stream(const Options &o, uint64_t io_size, uint64_t file_size) {
    RunResult res;
    res.io_size = io_size = std::min(io_size, file_size);
    res.file_size = file_size;
    res.planned_bytes = uint64_t{o.stream} * io_size;
    const bool write = is_write(o.io);
    phxfs::Device dev(o.device);
    const int fd = ::open(o.file.c_str(), (write ? O_RDWR : O_RDONLY) | O_CLOEXEC);
    if (fd < 0)
        throw std::runtime_error("open " + o.file);
    try {
        IoBuffer buf(o.device, o.mem, io_size, false);
        static StreamApi api;
        CUdevice d = 0;
        CUcontext ctx = nullptr;
        cu(api.device_get(&d, o.device), "cuDeviceGet");
        cu(api.retain(&ctx, d), "cuDevicePrimaryCtxRetain");
        cu(api.set_current(ctx), "cuCtxSetCurrent");
        CUstream s = nullptr;
        cu(api.create(&s, CU_STREAM_NON_BLOCKING), "cuStreamCreate");
        phxfs::File file(fd, dev);

        const uint64_t slots = file_size / io_size;
        std::mt19937_64 rng(42);
        std::vector<size_t> sizes(o.stream, io_size);
        std::vector<off_t> offs(o.stream);
        std::vector<ssize_t> results(o.stream, 0);
        for (unsigned i = 0; i < o.stream; ++i)
            offs[i] = static_cast<off_t>((is_random(o.io) ? rng() % slots : i % slots) * io_size);
        if (phxfs_stream_register(s, 0) < 0)
            throw std::runtime_error(std::string("phxfs_stream_register: ") + phxfs_last_error());

        unsigned full = 0;
        const auto t0 = std::chrono::steady_clock::now();
        for (unsigned i = 0; i < o.stream; ++i) {
            for (;;) {
                const int rc = write ? phxfs_file_write_stream(file.handle(), buf.data(), &sizes[i],
                                                               &offs[i], nullptr, &results[i], s)
                                     : phxfs_file_read_stream(file.handle(), buf.data(), &sizes[i],
                                                              &offs[i], nullptr, &results[i], s);
                if (rc == 0)
                    break;
                if (errno != EAGAIN)
                    throw std::runtime_error(std::string("stream request: ") + phxfs_last_error());
                ++full; // staging in use: let the stream catch up
                cu(api.sync(s), "cuStreamSynchronize");
            }
        }
        cu(api.sync(s), "cuStreamSynchronize");
        res.wall_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        api.destroy(s);

        ThreadResult t;
        const auto mean = static_cast<uint64_t>(res.wall_s * 1e9 / o.stream);
        for (unsigned i = 0; i < o.stream; ++i) {
            if (results[i] < 0)
                res.error = "request " + std::to_string(i) + " failed: errno " +
                            std::to_string(-results[i]);
            t.bytes += results[i] > 0 ? static_cast<uint64_t>(results[i]) : 0;
            t.latency_ns.push_back(mean);
        }
        t.io_ns = static_cast<uint64_t>(res.wall_s * 1e9);
        res.threads.push_back(std::move(t));
        res.note = std::to_string(o.stream) + " requests on one stream, one synchronize; "
                                              "latencies are the mean";
        if (full)
            res.note +=
                "; the staging was full " + std::to_string(full) + " times (PHXFS_STREAM_STAGING)";
    } catch (...) {
        ::close(fd);
        throw;
    }
    ::close(fd);
    return res;
}

} // namespace phxbench

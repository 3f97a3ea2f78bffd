// phxfs-bench --stream N: N stream-ordered requests of the I/O size enqueued
// on one CUDA stream, then one cuStreamSynchronize; throughput and IOPS of
// the whole. Through libphxfs (phxfs_file_read_stream or _write_stream), or
// with -x cufile through cuFile's stream API (cuFileReadAsync or
// cuFileWriteAsync on a stream cuFileStreamRegister registered): the same
// requests on the same kind of stream, timed the same way. The stream comes
// from the CUDA driver loaded at run time, as the rest of the tool does.
#include "stream.hpp"

#include "cufile_api.hpp"
#include "memory.hpp"

#include <phxfs/phxfs.hpp>

#include <dlfcn.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <functional>
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

// A non-blocking stream on the primary context of CUDA device `device`, which
// it makes current on the calling thread; waited for and destroyed with this
// object.
class Stream {
  public:
    explicit Stream(int device) : api_(driver()) {
        CUdevice d = 0;
        CUcontext ctx = nullptr;
        cu(api_.device_get(&d, device), "cuDeviceGet");
        cu(api_.retain(&ctx, d), "cuDevicePrimaryCtxRetain");
        cu(api_.set_current(ctx), "cuCtxSetCurrent");
        cu(api_.create(&s_, CU_STREAM_NON_BLOCKING), "cuStreamCreate");
    }
    ~Stream() {
        drain();
        api_.destroy(s_);
    }
    Stream(const Stream &) = delete;
    Stream &operator=(const Stream &) = delete;

    CUstream get() const { return s_; }
    void sync() const { cu(api_.sync(s_), "cuStreamSynchronize"); }
    void drain() const noexcept { api_.sync(s_); } // sync() for destructors

  private:
    static const StreamApi &driver() {
        static const StreamApi api; // throws (and is tried again) without a driver
        return api;
    }
    const StreamApi &api_;
    CUstream s_ = nullptr;
};

// Waits for the stream, then runs `then`, when it goes: declared after what a
// path's requests use (file handle, registrations), so that an error while
// enqueuing leaves no request in flight that points to them.
class Drain {
  public:
    explicit Drain(const Stream &s, std::function<void()> then = {})
        : s_(s), then_(std::move(then)) {}
    ~Drain() {
        s_.drain();
        if (then_)
            then_();
    }
    Drain(const Drain &) = delete;
    Drain &operator=(const Drain &) = delete;

  private:
    const Stream &s_;
    std::function<void()> then_;
};

// The run's requests: N of the I/O size at request-aligned offsets (in turn,
// wrapping around the file; at random with randread/randwrite), all at the
// start of one buffer. Sizes and offsets go by pointer, read when the stream
// gets to a request, which stores its result (bytes, or negative) in results.
struct Requests {
    std::vector<size_t> sizes;
    std::vector<off_t> offs;
    std::vector<ssize_t> results;
    off_t buf_off = 0; // the offset into the buffer, for the APIs that want a pointer

    Requests(const Options &o, uint64_t io_size, uint64_t file_size)
        : sizes(o.stream, io_size), offs(o.stream), results(o.stream, 0) {
        const uint64_t slots = file_size / io_size;
        std::mt19937_64 rng(42);
        for (unsigned i = 0; i < o.stream; ++i)
            offs[i] = static_cast<off_t>((is_random(o.io) ? rng() % slots : i % slots) * io_size);
    }
};

// Enqueues every request with submit(i) -- 0, or EAGAIN when the stream must
// catch up first (it is then synchronized and the request tried again); it
// throws on an error -- and synchronizes once. Fills res: the wall time from
// the first request to the synchronize, the bytes of the results, the mean
// as every request's latency, the first failed request (failed(result) says
// why) and the note. Returns how many times the stream had to catch up.
unsigned run_requests(const Options &o, const Stream &s, const Requests &r,
                      const std::function<int(unsigned)> &submit,
                      const std::function<std::string(ssize_t)> &failed, RunResult &res) {
    unsigned full = 0;
    const auto t0 = std::chrono::steady_clock::now();
    for (unsigned i = 0; i < o.stream; ++i)
        while (submit(i) == EAGAIN) {
            ++full;
            s.sync();
        }
    s.sync();
    res.wall_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

    ThreadResult t;
    const auto mean = static_cast<uint64_t>(res.wall_s * 1e9 / o.stream);
    for (unsigned i = 0; i < o.stream; ++i) {
        if (r.results[i] < 0 && res.error.empty())
            res.error = "request " + std::to_string(i) + " failed: " + failed(r.results[i]);
        t.bytes += r.results[i] > 0 ? static_cast<uint64_t>(r.results[i]) : 0;
        t.latency_ns.push_back(mean);
    }
    t.io_ns = static_cast<uint64_t>(res.wall_s * 1e9);
    res.threads.push_back(std::move(t));
    res.note = std::to_string(o.stream) + " requests on one stream, one synchronize; "
                                          "latencies are the mean";
    return full;
}

// libphxfs: phxfs_file_read_stream / _write_stream; EAGAIN while the staging
// is in use.
void run_phxfs(const Options &o, int fd, const phxfs::Device &dev, const IoBuffer &buf,
               const Stream &s, Requests &r, RunResult &res) {
    const bool write = is_write(o.io);
    phxfs::File file(fd, dev);
    if (phxfs_stream_register(s.get(), 0) < 0)
        throw std::runtime_error(std::string("phxfs_stream_register: ") + phxfs_last_error());
    const Drain drain(s);
    const unsigned full = run_requests(
        o, s, r,
        [&](unsigned i) {
            const int rc =
                write ? phxfs_file_write_stream(file.handle(), buf.data(), &r.sizes[i], &r.offs[i],
                                                nullptr, &r.results[i], s.get())
                      : phxfs_file_read_stream(file.handle(), buf.data(), &r.sizes[i], &r.offs[i],
                                               nullptr, &r.results[i], s.get());
            if (rc == 0)
                return 0;
            if (errno == EAGAIN) // staging in use: let the stream catch up
                return EAGAIN;
            throw std::runtime_error(std::string("stream request: ") + phxfs_last_error());
        },
        [](ssize_t n) { return "errno " + std::to_string(-n); }, res);
    if (full)
        res.note +=
            "; the staging was full " + std::to_string(full) + " times (PHXFS_STREAM_STAGING)";
}

// cuFile's stream API. The stream is registered with flags 0
// (CU_FILE_STREAM_FLAGS_NONE): nothing is fixed at submission, cuFile reads
// each size and offset when the stream gets to the request, as libphxfs does.
// The file handle and the buffer registration are those of -x cufile's other
// modes. cuFile's errors (no stream API in compat mode, a failed call or
// request) go to res.error with cuFile's error text.
void run_cufile(const Options &o, int fd, const IoBuffer &buf, const Stream &s, Requests &r,
                RunResult &res) {
    const bool write = is_write(o.io);
    phxcufile::FileHandle fh; // throws: no cuFile, the driver or the handle failed
    const phxcufile::CUfileHandle_t h = fh.open(fd);
    const phxcufile::Api &cf = *phxcufile::api();
    try {
        if (buf.on_gpu())
            phxcufile::buf_register(cf, buf.data(), buf.size());
        const phxcufile::BufDeregister dereg{&cf, buf.on_gpu() ? buf.data() : nullptr};
        const unsigned flags = phxcufile::CU_FILE_STREAM_FLAGS_NONE;
        if (const auto e = cf.cuFileStreamRegister(s.get(), flags);
            e.err != phxcufile::CU_FILE_SUCCESS)
            throw std::runtime_error("cuFileStreamRegister (flags " + std::to_string(flags) +
                                     "): " + phxcufile::error_text(e));
        const Drain drain(s, [&] { cf.cuFileStreamDeregister(s.get()); });
        const char *call = write ? "cuFileWriteAsync" : "cuFileReadAsync";
        run_requests(
            o, s, r,
            [&](unsigned i) {
                const auto e = (write ? cf.cuFileWriteAsync : cf.cuFileReadAsync)(
                    h, buf.data(), &r.sizes[i], &r.offs[i], &r.buf_off, &r.results[i], s.get());
                if (e.err != phxcufile::CU_FILE_SUCCESS)
                    throw std::runtime_error(std::string(call) + " of request " +
                                             std::to_string(i) + ": " + phxcufile::error_text(e));
                return 0;
            },
            [](ssize_t n) {
                return n == -1 ? std::string("I/O error (-1)")
                               : phxcufile::error_text({static_cast<int>(-n), 0});
            },
            res);
        res.note += std::string("; cuFile stream API: ") + call +
                    " on a stream registered with flags 0 (sizes and offsets read when the "
                    "stream gets to each request)";
    } catch (const std::exception &e) {
        res.error = e.what();
    }
}

} // namespace

RunResult run_stream(const Options &o, uint64_t io_size, uint64_t file_size) {
    RunResult res;
    res.io_size = io_size = std::min(io_size, file_size);
    res.file_size = file_size;
    res.planned_bytes = uint64_t{o.stream} * io_size;
    const bool cufile = o.path == PathType::cufile;
    if (cufile) { // before anything is set up: say what is missing first
        const phxcufile::Api *cf = phxcufile::api();
        if (!cf)
            throw std::runtime_error("-x cufile: " + phxcufile::why());
        if (const char *missing = phxcufile::missing_stream_call(*cf)) {
            res.error = "-x cufile --stream: " + cf->library + " has no stream API (it lacks " +
                        missing + "; cuFile has it from GDS 1.7, CUDA 12.2)";
            return res;
        }
    }
    phxfs::Device dev(o.device);
    const int fd = ::open(o.file.c_str(), (is_write(o.io) ? O_RDWR : O_RDONLY) | O_CLOEXEC);
    if (fd < 0)
        throw std::runtime_error("open " + o.file);
    try {
        // Destroyed in reverse: the stream (waited for) before the requests
        // and the buffer it may still use.
        IoBuffer buf(o.device, o.mem, io_size, false);
        Requests r(o, io_size, file_size);
        const Stream s(o.device);
        if (cufile)
            run_cufile(o, fd, buf, s, r, res);
        else
            run_phxfs(o, fd, dev, buf, s, r, res);
    } catch (...) {
        ::close(fd);
        throw;
    }
    ::close(fd);
    return res;
}

} // namespace phxbench

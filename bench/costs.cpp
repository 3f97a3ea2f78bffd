// costs: what the control calls cost, Phoenix beside cuFile, and where the
// time of one small read goes. Every figure is the median of many
// repetitions, in microseconds, except the one-off calls (first
// phxfs_open, cuFileDriverOpen, cuFileDriverClose), timed once.
//
//   costs [FILE] [REPS]   (FILE: a scratch file, created, default
//                          /var/tmp/phx-costs.dat; REPS default 2000)
//
// cuFile (libcufile.so.0) is loaded at run time (tools/bench/cufile_api.hpp);
// without it the cuFile rows say n/a.
#include "../tools/bench/cufile_api.hpp"

#include <phxfs/phxfs.h>

#include <cuda.h>
#include <cuda_runtime.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

namespace {

double now_us() {
    using namespace std::chrono;
    return duration<double, std::micro>(steady_clock::now().time_since_epoch()).count();
}

[[noreturn]] void die(const std::string &what) {
    std::fprintf(stderr, "costs: %s\n", what.c_str());
    std::exit(1);
}

void check_cu(CUresult r, const char *what) {
    if (r != CUDA_SUCCESS)
        die(std::string(what) + " failed: CUDA error " + std::to_string(r));
}

void check_px(long r, const char *what) {
    if (r < 0)
        die(std::string(what) + " failed: " + phxfs_last_error());
}

// Median (and p99) of `reps` runs of f, each timed alone.
struct Timing {
    double p50 = 0, p99 = 0;
};
Timing time_it(int reps, const std::function<void()> &f) {
    std::vector<double> t(reps);
    for (int i = 0; i < std::min(reps, 50); ++i) // warm up
        f();
    for (int i = 0; i < reps; ++i) {
        const double t0 = now_us();
        f();
        t[i] = now_us() - t0;
    }
    std::sort(t.begin(), t.end());
    return {t[t.size() / 2], t[std::min(t.size() - 1, t.size() * 99 / 100)]};
}

// A pair of timed calls (e.g. register, then deregister): medians of each.
void time_pair(int reps, const std::function<void()> &a, const std::function<void()> &b, Timing &ta,
               Timing &tb) {
    std::vector<double> x(reps), y(reps);
    for (int i = 0; i < reps; ++i) {
        const double t0 = now_us();
        a();
        const double t1 = now_us();
        b();
        x[i] = t1 - t0;
        y[i] = now_us() - t1;
    }
    std::sort(x.begin(), x.end());
    std::sort(y.begin(), y.end());
    ta = {x[reps / 2], x[reps * 99 / 100]};
    tb = {y[reps / 2], y[reps * 99 / 100]};
}

std::string us(double v) {
    char b[32];
    if (v >= 1000)
        std::snprintf(b, sizeof b, "%.0f", v);
    else
        std::snprintf(b, sizeof b, "%.2f", v);
    return b;
}

void row(const char *what, const std::string &phx, const std::string &cuf) {
    std::printf("| %-44s | %14s | %14s |\n", what, phx.c_str(), cuf.c_str());
}

} // namespace

int main(int argc, char **argv) {
    const char *path = argc > 1 ? argv[1] : "/var/tmp/phx-costs.dat";
    const int reps = argc > 2 ? std::atoi(argv[2]) : 2000;
    constexpr size_t kFile = 64 << 20;
    {
        struct stat st {};
        if (stat(path, &st) != 0 || static_cast<size_t>(st.st_size) < kFile) {
            const int fd = open(path, O_CREAT | O_WRONLY | O_TRUNC, 0644);
            if (fd < 0)
                die(std::string("create ") + path + ": " + std::strerror(errno));
            std::vector<char> b(kFile, 'c');
            if (pwrite(fd, b.data(), b.size(), 0) != static_cast<ssize_t>(b.size()))
                die("pwrite");
            close(fd);
        }
    }
    const int fd = open(path, O_RDWR);
    if (fd < 0)
        die(std::string("open ") + path);
    {
        std::vector<char> b(kFile);
        if (pread(fd, b.data(), b.size(), 0) != static_cast<ssize_t>(b.size())) // warm the cache
            die("pread");
    }

    if (cudaSetDevice(0) != cudaSuccess || cudaFree(nullptr) != cudaSuccess)
        die("no CUDA device");
    cudaDeviceProp prop{};
    cudaGetDeviceProperties(&prop, 0);
    std::printf("costs: %s, file %s, %d reps, median (p99) in microseconds\n\n", prop.name, path,
                reps);

    const size_t sizes[] = {4 << 10, 64 << 10, 1 << 20, 16 << 20};
    std::vector<void *> bufs;
    for (size_t s : sizes) {
        void *p = nullptr;
        if (cudaMalloc(&p, s) != cudaSuccess)
            die("cudaMalloc");
        bufs.push_back(p);
    }

    // --- Phoenix control calls ---
    double first_open = now_us();
    check_px(phxfs_open(0), "phxfs_open");
    first_open = now_us() - first_open;
    check_px(phxfs_close(0), "phxfs_close");
    Timing t_open, t_close;
    time_pair(
        reps / 4 + 1, [] { check_px(phxfs_open(0), "phxfs_open"); },
        [] { check_px(phxfs_close(0), "phxfs_close"); }, t_open, t_close);
    check_px(phxfs_open(0), "phxfs_open");
    Timing px_reg[4], px_dereg[4];
    for (int i = 0; i < 4; ++i) {
        void *p = bufs[i];
        const size_t n = sizes[i];
        time_pair(
            reps,
            [&] {
                void *t = nullptr;
                check_px(phxfs_regmem(0, p, n, &t), "phxfs_regmem");
            },
            [&] { check_px(phxfs_deregmem(0, p, n), "phxfs_deregmem"); }, px_reg[i], px_dereg[i]);
    }

    // --- cuFile control calls ---
    const phxcufile::Api *cf = phxcufile::api();
    double cf_open = -1, cf_close = -1;
    Timing cf_hreg{}, cf_hdereg{}, cf_reg[4]{}, cf_dereg[4]{};
    std::string cf_why = cf ? "" : phxcufile::why();
    phxcufile::CUfileHandle_t cfh = nullptr;
    if (cf) {
        double t0 = now_us();
        auto e = cf->cuFileDriverOpen();
        cf_open = now_us() - t0;
        if (e.err != 0) {
            cf_why = "cuFileDriverOpen: " + phxcufile::error_text(e);
            cf = nullptr;
        }
    }
    if (cf) {
        phxcufile::CUfileDescr_t d{};
        d.type = phxcufile::CU_FILE_HANDLE_TYPE_OPAQUE_FD;
        d.handle.fd = fd;
        time_pair(
            reps / 4 + 1,
            [&] {
                auto e = cf->cuFileHandleRegister(&cfh, &d);
                if (e.err != 0)
                    die("cuFileHandleRegister: " + phxcufile::error_text(e));
            },
            [&] { cf->cuFileHandleDeregister(cfh); }, cf_hreg, cf_hdereg);
        for (int i = 0; i < 4; ++i) {
            void *p = bufs[i];
            const size_t n = sizes[i];
            time_pair(
                reps,
                [&] {
                    auto e = cf->cuFileBufRegister(p, n, 0);
                    if (e.err != 0)
                        die("cuFileBufRegister: " + phxcufile::error_text(e));
                },
                [&] { cf->cuFileBufDeregister(p); }, cf_reg[i], cf_dereg[i]);
        }
        auto e = cf->cuFileHandleRegister(&cfh, &d); // kept for the read anatomy below
        if (e.err != 0)
            die("cuFileHandleRegister: " + phxcufile::error_text(e));
    }

    auto both = [](const Timing &t) { return us(t.p50) + " (" + us(t.p99) + ")"; };
    const std::string na = "n/a";
    std::printf("| call | phxfs | cuFile |\n| --- | ---: | ---: |\n");
    row("driver open, first in the process", us(first_open), cf_open >= 0 ? us(cf_open) : na);
    row("open (phxfs_open, 0 -> 1 opens)", both(t_open), na);
    row("close (phxfs_close, 1 -> 0 opens)", both(t_close), na);
    row("file handle register (none in phxfs)", "0", cf ? both(cf_hreg) : na);
    row("file handle deregister (none in phxfs)", "0", cf ? both(cf_hdereg) : na);
    const char *names[] = {"4 KiB", "64 KiB", "1 MiB", "16 MiB"};
    for (int i = 0; i < 4; ++i) {
        std::string w = std::string("register ") + names[i] + " cudaMalloc buffer";
        row(w.c_str(), both(px_reg[i]), cf ? both(cf_reg[i]) : na);
        w = std::string("deregister ") + names[i];
        row(w.c_str(), both(px_dereg[i]), cf ? both(cf_dereg[i]) : na);
    }

    // --- Where the time of one 4 KiB read into GPU memory goes ---
    std::printf("\nOne 4 KiB read of a cached file into cudaMalloc memory, and its parts:\n\n");
    std::printf("| step | median us | p99 us |\n| --- | ---: | ---: |\n");
    auto step = [&](const char *what, const std::function<void()> &f) {
        const Timing t = time_it(reps, f);
        std::printf("| %-58s | %8.2f | %8.2f |\n", what, t.p50, t.p99);
    };
    CUcontext ctx = nullptr;
    check_cu(cuCtxGetCurrent(&ctx), "cuCtxGetCurrent");
    CUstream st = nullptr;
    check_cu(cuStreamCreate(&st, CU_STREAM_NON_BLOCKING), "cuStreamCreate");
    void *pinned = nullptr;
    check_cu(cuMemHostAlloc(&pinned, 1 << 20, CU_MEMHOSTALLOC_PORTABLE), "cuMemHostAlloc");
    std::vector<char> pageable(1 << 20);
    const auto dptr = reinterpret_cast<CUdeviceptr>(bufs[1]); // the 64 KiB buffer
    unsigned long long rnd = 1;
    size_t n = 4096;
    auto next_off = [&] { // a random n-aligned offset of a whole request in the file
        rnd = rnd * 6364136223846793005ull + 1442695040888963407ull;
        return static_cast<off_t>((rnd >> 33) % (kFile / n) * n);
    };
    for (size_t size : {size_t(4096), size_t(65536)}) {
        n = size;
        std::printf("| **%zu KiB** | | |\n", n >> 10);
        auto label = [&](const char *s) { return std::string(s); };
        step(label("pread from the page cache into pinned memory").c_str(), [&] {
            if (pread(fd, pinned, n, next_off()) != static_cast<ssize_t>(n))
                die("pread");
        });
        step("cuMemcpyHtoDAsync (pinned) + cuStreamSynchronize", [&] {
            check_cu(cuMemcpyHtoDAsync(dptr, pinned, n, st), "cuMemcpyHtoDAsync");
            check_cu(cuStreamSynchronize(st), "cuStreamSynchronize");
        });
        step("cuMemcpyHtoDAsync (pinned), the call alone (queued, not waited)",
             [&] { check_cu(cuMemcpyHtoDAsync(dptr, pinned, n, st), "cuMemcpyHtoDAsync"); });
        check_cu(cuStreamSynchronize(st), "cuStreamSynchronize");
        step("cuMemcpyHtoDAsync (pinned) + spin on cuStreamQuery", [&] {
            check_cu(cuMemcpyHtoDAsync(dptr, pinned, n, st), "cuMemcpyHtoDAsync");
            while (cuStreamQuery(st) == CUDA_ERROR_NOT_READY) {
            }
        });
        step("cuMemcpyHtoD (pinned, synchronous)",
             [&] { check_cu(cuMemcpyHtoD(dptr, pinned, n), "cuMemcpyHtoD"); });
        step("cuMemcpyHtoD (pageable, synchronous)",
             [&] { check_cu(cuMemcpyHtoD(dptr, pageable.data(), n), "cuMemcpyHtoD"); });
        step("naive: pread + cuMemcpyHtoD (pinned)", [&] {
            if (pread(fd, pinned, n, next_off()) != static_cast<ssize_t>(n))
                die("pread");
            check_cu(cuMemcpyHtoD(dptr, pinned, n), "cuMemcpyHtoD");
        });
        void *t = nullptr;
        check_px(phxfs_regmem(0, bufs[1], sizes[1], &t), "phxfs_regmem");
        step("phxfs_read (registered buffer)", [&] {
            check_px(phxfs_read({fd, 0}, bufs[1], 0, n, next_off()), "phxfs_read");
        });
        check_px(phxfs_deregmem(0, bufs[1], sizes[1]), "phxfs_deregmem");
        step("phxfs_read (unregistered buffer)", [&] {
            check_px(phxfs_read({fd, 0}, bufs[1], 0, n, next_off()), "phxfs_read");
        });
        if (cf) {
            auto e = cf->cuFileBufRegister(bufs[1], sizes[1], 0);
            if (e.err != 0)
                die("cuFileBufRegister: " + phxcufile::error_text(e));
            step("cuFileRead (registered buffer)", [&] {
                if (cf->cuFileRead(cfh, bufs[1], n, next_off(), 0) != static_cast<ssize_t>(n))
                    die("cuFileRead");
            });
            cf->cuFileBufDeregister(bufs[1]);
        }
    }
    // Many small requests: what the copies of a group cost, one by one, as
    // one batched copy, and as one copy of a packed buffer; beside N preads
    // and a phxfs batch of N reads (issue #12's engine).
    {
        void *dev = nullptr;
        if (cudaMalloc(&dev, 2 << 20) != cudaSuccess)
            die("cudaMalloc");
        const auto d0 = reinterpret_cast<CUdeviceptr>(dev);
        phxfs_file_t fh = nullptr;
        check_px(phxfs_file_open(&fh, 0, fd), "phxfs_file_open");
        phxfs_batch_t batch = nullptr;
        check_px(phxfs_batch_create(&batch, 256), "phxfs_batch_create");
        std::vector<CUdeviceptr> dsts(256), srcs(256);
        std::vector<size_t> lens(256, 4096);
        std::vector<phxfs_io> ios(256);
        std::vector<phxfs_completion> cs(256);
        n = 4096;
        for (int count : {16, 64, 256}) {
            std::printf("| **%d x 4 KiB** | | |\n", count);
            for (int i = 0; i < count; ++i) {
                dsts[i] = d0 + static_cast<CUdeviceptr>(i) * 8192; // scattered
                srcs[i] =
                    reinterpret_cast<CUdeviceptr>(pinned) + static_cast<CUdeviceptr>(i) * 4096;
            }
            step("preads from the page cache into pinned memory, one thread", [&] {
                for (int i = 0; i < count; ++i)
                    if (pread(fd, static_cast<char *>(pinned) + i * 4096, 4096, next_off()) != 4096)
                        die("pread");
            });
            step("cuMemcpyHtoDAsync each + one cuStreamSynchronize", [&] {
                for (int i = 0; i < count; ++i)
                    check_cu(
                        cuMemcpyHtoDAsync(dsts[i], reinterpret_cast<void *>(srcs[i]), 4096, st),
                        "cuMemcpyHtoDAsync");
                check_cu(cuStreamSynchronize(st), "cuStreamSynchronize");
            });
            step("cuMemcpyBatchAsync + cuStreamSynchronize", [&] {
                CUmemcpyAttributes attr{};
                attr.srcAccessOrder = CU_MEMCPY_SRC_ACCESS_ORDER_STREAM;
                size_t idx = 0;
                check_cu(cuMemcpyBatchAsync(dsts.data(), srcs.data(), lens.data(),
                                            static_cast<size_t>(count), &attr, &idx, 1, st),
                         "cuMemcpyBatchAsync");
                check_cu(cuStreamSynchronize(st), "cuStreamSynchronize");
            });
            step("one packed copy of all + cuStreamSynchronize", [&] {
                check_cu(cuMemcpyHtoDAsync(d0, pinned, static_cast<size_t>(count) * 4096, st),
                         "cuMemcpyHtoDAsync");
                check_cu(cuStreamSynchronize(st), "cuStreamSynchronize");
            });
            step("phxfs batch: submit, reap all (compat)", [&] {
                for (int i = 0; i < count; ++i)
                    ios[i] = {fh,
                              PHXFS_OP_READ,
                              0,
                              dev,
                              static_cast<uint64_t>(i) * 8192,
                              4096,
                              static_cast<uint64_t>(next_off()),
                              nullptr};
                check_px(phxfs_batch_submit(batch, ios.data(), count), "phxfs_batch_submit");
                for (int got = 0; got < count;) {
                    const int r = phxfs_batch_reap(batch, cs.data(), 1, count - got, -1);
                    check_px(r, "phxfs_batch_reap");
                    got += r;
                }
            });
        }
        check_px(phxfs_batch_destroy(batch), "phxfs_batch_destroy");
        check_px(phxfs_file_close(fh), "phxfs_file_close");
        cudaFree(dev);
    }
    std::printf("| **parts of the call** | | |\n");
    step("fcntl(F_GETFL)", [&] { (void)fcntl(fd, F_GETFL); });
    step("fstat", [&] {
        struct stat sb {};
        (void)fstat(fd, &sb);
    });
    step("cuPointerGetAttributes (3 attributes)", [&] {
        CUmemorytype type{};
        int ord = -1;
        unsigned managed = 0;
        CUpointer_attribute a[] = {CU_POINTER_ATTRIBUTE_MEMORY_TYPE,
                                   CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL,
                                   CU_POINTER_ATTRIBUTE_IS_MANAGED};
        void *d[] = {&type, &ord, &managed};
        check_cu(cuPointerGetAttributes(3, a, d, dptr), "cuPointerGetAttributes");
    });
    step("cuMemGetAddressRange", [&] {
        CUdeviceptr b = 0;
        size_t s = 0;
        check_cu(cuMemGetAddressRange(&b, &s, dptr), "cuMemGetAddressRange");
    });
    step("cuCtxSetCurrent (same context)",
         [&] { check_cu(cuCtxSetCurrent(ctx), "cuCtxSetCurrent"); });
    step("GPU round trip: 4-byte cuMemcpyHtoDAsync + cuStreamSynchronize", [&] {
        check_cu(cuMemcpyHtoDAsync(dptr, pinned, 4, st), "cuMemcpyHtoDAsync");
        check_cu(cuStreamSynchronize(st), "cuStreamSynchronize");
    });
    CUevent ev = nullptr;
    check_cu(cuEventCreate(&ev, CU_EVENT_DISABLE_TIMING), "cuEventCreate");
    step("GPU round trip: cuEventRecord + cuEventSynchronize", [&] {
        check_cu(cuEventRecord(ev, st), "cuEventRecord");
        check_cu(cuEventSynchronize(ev), "cuEventSynchronize");
    });
    step("cuStreamSynchronize (idle stream)",
         [&] { check_cu(cuStreamSynchronize(st), "cuStreamSynchronize"); });

    if (cf) {
        cf->cuFileHandleDeregister(cfh);
        const double t0 = now_us();
        cf->cuFileDriverClose();
        cf_close = now_us() - t0;
        std::printf("\ncuFileDriverClose: %s us (once)\n", us(cf_close).c_str());
    } else {
        std::printf("\ncuFile: %s\n", cf_why.c_str());
    }
    phxfs_close(0);
    close(fd);
    return 0;
}

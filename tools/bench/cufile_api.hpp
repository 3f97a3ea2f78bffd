// cufile_api.hpp - the few cuFile (NVIDIA GPUDirect Storage) calls that
// phxfs-bench and bench/costs compare against, loaded at run time.
//
// Written from NVIDIA's public cuFile API reference (docs.nvidia.com, "cuFile
// API Reference Guide"): the types below are declared here with the layout
// that reference describes for 64-bit Linux, so the tools build without
// cufile.h and run without libcufile (they then say that cuFile is missing).
// Only what the benchmarks use: driver open/close, file handle and buffer
// registration, synchronous read/write, the batch API and the stream API;
// and a file handle that opens the driver once.
#pragma once

#include <dlfcn.h>
#include <sys/types.h>

#include <ctime>

#include <cstddef>
#include <cstdlib>
#include <mutex>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>

namespace phxcufile {

// CUfileError_t: a cuFile status (0 success, 5000 + n a cuFile error) and the
// CUDA driver status behind it when the error came from CUDA.
struct CUfileError_t {
    int err;    // CUfileOpError
    int cu_err; // CUresult
};
inline constexpr int CU_FILE_SUCCESS = 0;

// CUfileDescr_t: what cuFileHandleRegister registers. For a POSIX file, type
// is CU_FILE_HANDLE_TYPE_OPAQUE_FD and handle.fd the open descriptor.
inline constexpr int CU_FILE_HANDLE_TYPE_OPAQUE_FD = 1;
struct CUfileDescr_t {
    int type;
    union {
        int fd;
        void *handle;
    } handle;
    const void *fs_ops; // NULL for kernel file systems
};
using CUfileHandle_t = void *;

// The batch API (cuFileBatchIO*), for phxfs-bench -x cufile --batch N.
inline constexpr int CUFILE_READ = 0, CUFILE_WRITE = 1; // CUfileOpcode_t
inline constexpr int CUFILE_COMPLETE = 0x10;            // CUfileStatus_t
inline constexpr int CUFILE_BATCH = 1;                  // CUfileBatchMode_t
struct CUfileIOParams_t {
    int mode; // CUFILE_BATCH
    union {
        struct {
            void *devPtr_base;
            off_t file_offset;
            off_t devPtr_offset;
            size_t size;
        } batch;
    } u;
    CUfileHandle_t fh;
    int opcode;
    void *cookie;
};
struct CUfileIOEvents_t {
    void *cookie;
    int status; // CUfileStatus_t
    size_t ret; // bytes, or a negative error
};
using CUfileBatchHandle_t = void *;

// The stream API (cuFileStreamRegister, cuFileReadAsync, ...), for
// phxfs-bench -x cufile --stream N. CUstream: the CUDA driver's stream handle.
using CUstream = void *;
// cuFileStreamRegister's flags say which parameters of a stream's requests
// are fixed when they are enqueued (the buffer offset, the file offset, the
// size) and whether all are 4 KiB aligned. 0: none is; cuFile reads *size_p
// and the offsets when the stream gets to the request.
inline constexpr unsigned CU_FILE_STREAM_FLAGS_NONE = 0;

struct Api {
    CUfileError_t (*cuFileDriverOpen)() = nullptr;
    CUfileError_t (*cuFileDriverClose)() = nullptr;
    CUfileError_t (*cuFileHandleRegister)(CUfileHandle_t *, CUfileDescr_t *) = nullptr;
    void (*cuFileHandleDeregister)(CUfileHandle_t) = nullptr;
    CUfileError_t (*cuFileBufRegister)(const void *, size_t, int) = nullptr;
    CUfileError_t (*cuFileBufDeregister)(const void *) = nullptr;
    // (handle, device base pointer, bytes, file offset, offset into the buffer)
    ssize_t (*cuFileRead)(CUfileHandle_t, void *, size_t, off_t, off_t) = nullptr;
    ssize_t (*cuFileWrite)(CUfileHandle_t, const void *, size_t, off_t, off_t) = nullptr;
    // Null where the library has no batch API.
    CUfileError_t (*cuFileBatchIOSetUp)(CUfileBatchHandle_t *, unsigned) = nullptr;
    CUfileError_t (*cuFileBatchIOSubmit)(CUfileBatchHandle_t, unsigned, CUfileIOParams_t *,
                                         unsigned) = nullptr;
    CUfileError_t (*cuFileBatchIOGetStatus)(CUfileBatchHandle_t, unsigned, unsigned *,
                                            CUfileIOEvents_t *, struct timespec *) = nullptr;
    void (*cuFileBatchIODestroy)(CUfileBatchHandle_t) = nullptr;
    // Null where the library has no stream API (GDS before 1.7, CUDA 12.2).
    // (handle, buffer base, &size, &file offset, &buffer offset, &bytes done,
    // stream): the values pointed to are read, and *bytes done written (bytes,
    // or a negative error), when the stream gets to the request.
    CUfileError_t (*cuFileReadAsync)(CUfileHandle_t, void *, size_t *, off_t *, off_t *, ssize_t *,
                                     CUstream) = nullptr;
    CUfileError_t (*cuFileWriteAsync)(CUfileHandle_t, void *, size_t *, off_t *, off_t *, ssize_t *,
                                      CUstream) = nullptr;
    CUfileError_t (*cuFileStreamRegister)(CUstream, unsigned) = nullptr;
    CUfileError_t (*cuFileStreamDeregister)(CUstream) = nullptr;
    std::string library; // the file name that was loaded
};

namespace detail {
struct Loaded {
    Api api;
    bool ok = false;
    std::string why;
};
inline Loaded &loaded() {
    static Loaded l;
    static std::once_flag once;
    std::call_once(once, [] {
        // PHXFS_CUFILE_LIB names the library explicitly; else the loader's
        // search path finds libcufile.so.0 (or the unversioned link).
        const char *env = std::getenv("PHXFS_CUFILE_LIB");
        const char *names[] = {env && *env ? env : nullptr, "libcufile.so.0", "libcufile.so"};
        void *h = nullptr;
        std::string tried;
        for (const char *n : names) {
            if (!n)
                continue;
            if ((h = dlopen(n, RTLD_NOW | RTLD_LOCAL))) {
                l.api.library = n;
                break;
            }
            const char *e = dlerror();
            tried += std::string(tried.empty() ? "" : "; ") + (e ? e : n);
        }
        if (!h) {
            l.why = "cuFile is not installed (dlopen of libcufile.so.0 and libcufile.so failed: " +
                    tried + "); set PHXFS_CUFILE_LIB or LD_LIBRARY_PATH to its directory";
            return;
        }
        auto sym = [&](auto &f, std::initializer_list<const char *> names_) {
            for (const char *n : names_)
                if (void *p = dlsym(h, n)) {
                    f = reinterpret_cast<std::remove_reference_t<decltype(f)>>(p);
                    return true;
                }
            l.why = std::string(l.api.library) + " lacks " + *names_.begin();
            return false;
        };
        Api &a = l.api;
        l.ok = sym(a.cuFileDriverOpen, {"cuFileDriverOpen"}) &&
               sym(a.cuFileDriverClose, {"cuFileDriverClose_v2", "cuFileDriverClose"}) &&
               sym(a.cuFileHandleRegister, {"cuFileHandleRegister"}) &&
               sym(a.cuFileHandleDeregister, {"cuFileHandleDeregister"}) &&
               sym(a.cuFileBufRegister, {"cuFileBufRegister"}) &&
               sym(a.cuFileBufDeregister, {"cuFileBufDeregister"}) &&
               sym(a.cuFileRead, {"cuFileRead"}) && sym(a.cuFileWrite, {"cuFileWrite"});
        // Optional: left null where missing.
        auto opt = [&](auto &f, const char *name) {
            f = reinterpret_cast<std::remove_reference_t<decltype(f)>>(dlsym(h, name));
        };
        opt(a.cuFileBatchIOSetUp, "cuFileBatchIOSetUp");
        opt(a.cuFileBatchIOSubmit, "cuFileBatchIOSubmit");
        opt(a.cuFileBatchIOGetStatus, "cuFileBatchIOGetStatus");
        opt(a.cuFileBatchIODestroy, "cuFileBatchIODestroy");
        opt(a.cuFileReadAsync, "cuFileReadAsync");
        opt(a.cuFileWriteAsync, "cuFileWriteAsync");
        opt(a.cuFileStreamRegister, "cuFileStreamRegister");
        opt(a.cuFileStreamDeregister, "cuFileStreamDeregister");
    });
    return l;
}
} // namespace detail

// The loaded API, or nullptr with the reason in why().
inline const Api *api() {
    return detail::loaded().ok ? &detail::loaded().api : nullptr;
}
inline const std::string &why() {
    return detail::loaded().why;
}

// "cuFile error 5027 (CUDA 0)" with a hint for the errors seen on VMs.
inline std::string error_text(CUfileError_t e) {
    std::string s = "cuFile error " + std::to_string(e.err);
    if (e.cu_err)
        s += " (CUDA error " + std::to_string(e.cu_err) + ")";
    if (e.err == 5027)
        s += ": cuFile could not read the volume's attributes; on a VM or container it needs "
             "udev data for the disk (/run/udev/data/b<major>:<minor> with ID_FS_TYPE and "
             "ID_FS_USAGE), and allow_compat_mode in cufile.json";
    return s;
}

// The first stream API call the library lacks, or nullptr when it has all.
inline const char *missing_stream_call(const Api &a) {
    return !a.cuFileStreamRegister     ? "cuFileStreamRegister"
           : !a.cuFileReadAsync        ? "cuFileReadAsync"
           : !a.cuFileWriteAsync       ? "cuFileWriteAsync"
           : !a.cuFileStreamDeregister ? "cuFileStreamDeregister"
                                       : nullptr;
}

// -x cufile: a file's registered handle. The driver is opened by the first
// one (once per process; closing it can take seconds, so the process exit
// does). Throws std::runtime_error.
class FileHandle {
  public:
    FileHandle() = default;
    FileHandle(FileHandle &&o) noexcept : api_(o.api_), h_(std::exchange(o.h_, nullptr)) {}
    FileHandle &operator=(FileHandle &&) = delete;
    FileHandle(const FileHandle &) = delete;
    ~FileHandle() {
        if (h_)
            api_->cuFileHandleDeregister(h_);
    }

    CUfileHandle_t open(int fd) {
        api_ = api();
        if (!api_)
            throw std::runtime_error("-x cufile: " + why());
        static std::once_flag once;
        static CUfileError_t opened{};
        std::call_once(once, [&] { opened = api_->cuFileDriverOpen(); });
        if (opened.err != CU_FILE_SUCCESS)
            throw std::runtime_error("cuFileDriverOpen: " + error_text(opened));
        CUfileDescr_t d{};
        d.type = CU_FILE_HANDLE_TYPE_OPAQUE_FD;
        d.handle.fd = fd;
        const auto e = api_->cuFileHandleRegister(&h_, &d);
        if (e.err != CU_FILE_SUCCESS)
            throw std::runtime_error("cuFileHandleRegister: " + error_text(e));
        return h_;
    }
    CUfileHandle_t get() const { return h_; }

  private:
    const Api *api_ = nullptr;
    CUfileHandle_t h_ = nullptr;
};

// A buffer cuFileBufRegister registered, deregistered when this goes (after
// a run, before the buffer is freed); p null: nothing was registered.
struct BufDeregister {
    const Api *cf;
    const void *p;
    ~BufDeregister() {
        if (cf && p)
            cf->cuFileBufDeregister(p);
    }
};

// cuFileBufRegister of n bytes at p (flags 0); throws std::runtime_error with
// cuFile's error. Deregister with a BufDeregister.
inline void buf_register(const Api &cf, const void *p, size_t n) {
    const auto e = cf.cuFileBufRegister(p, n, 0);
    if (e.err != CU_FILE_SUCCESS)
        throw std::runtime_error("cuFileBufRegister of " + std::to_string(n) +
                                 " bytes: " + error_text(e));
}

} // namespace phxcufile

// module.cpp - phxfs._phxfs: the Python extension over libphxfs's C API.
//
// Thin on purpose: every I/O call is one libphxfs call with the GIL
// released; errors become OSError(errno, "call: phxfs_last_error()"). The
// typed, documented API users see is python/phxfs/__init__.py.
#include "buffer.hpp"

#include <phxfs/phxfs.h>

#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

namespace nb = nanobind;
using namespace nb::literals;
using phxfs_py::BufferRef;
using phxfs_py::raise_os;
using phxfs_py::Via;

namespace {

// errno and phxfs_last_error() of a failed call, taken on the calling thread
// (the message is thread local) before anything else can change them.
struct Failure {
    int err = 0;
    std::string msg;
    void take() {
        err = errno;
        const char *m = phxfs_last_error();
        msg = m && *m ? m : std::strerror(err);
    }
    [[noreturn]] void raise(const char *call) const {
        raise_os(err, std::string(call) + ": " + msg);
    }
};

template <typename F> auto call_nogil(F &&f, Failure &fail) {
    nb::gil_scoped_release nogil;
    auto r = f();
    if (r < 0)
        fail.take();
    return r;
}

// The byte range [buf_offset, buf_offset + size) of a buffer; size -1: to its end.
uint64_t span_of(const BufferRef &b, int64_t buf_offset, int64_t size) {
    if (buf_offset < 0)
        throw nb::value_error("buf_offset must not be negative");
    if (static_cast<uint64_t>(buf_offset) > b.size())
        throw nb::value_error(("buf_offset " + std::to_string(buf_offset) +
                               " is past the buffer's end (" + std::to_string(b.size()) + " bytes)")
                                  .c_str());
    if (size < 0)
        return b.size() - static_cast<uint64_t>(buf_offset);
    if (static_cast<uint64_t>(size) > b.size() - static_cast<uint64_t>(buf_offset))
        throw nb::value_error(("size " + std::to_string(size) + " at buf_offset " +
                               std::to_string(buf_offset) + " runs past the buffer's end (" +
                               std::to_string(b.size()) + " bytes)")
                                  .c_str());
    return static_cast<uint64_t>(size);
}

Via via_from(const std::string &s) {
    if (s == "auto")
        return Via::automatic;
    if (s == "cuda_array_interface")
        return Via::cuda_array_interface;
    if (s == "dlpack")
        return Via::dlpack;
    if (s == "buffer")
        return Via::buffer;
    throw nb::value_error(("unknown buffer protocol '" + s + "'").c_str());
}

// A request that returns at once (phxfs_future_t) and the buffer it uses,
// held until it completes.
class Future {
  public:
    Future(phxfs_future_t f, BufferRef buf, const char *call)
        : f_(f), buf_(std::move(buf)), call_(call) {}
    ~Future() { release(); }
    Future(const Future &) = delete;
    Future &operator=(const Future &) = delete;

    bool done() {
        if (done_)
            return true;
        int r = phxfs_future_poll(f_);
        if (r == 1)
            finish(0);
        return done_;
    }
    // Waits up to timeout_ns (negative: no limit). Returns bytes moved;
    // raises TimeoutError when still running, OSError for a failed request.
    int64_t result(int64_t timeout_ns) {
        if (!done_) {
            finish(timeout_ns);
            if (!done_)
                raise_os(ETIMEDOUT, std::string(call_) + ": still running after the timeout");
        }
        if (result_ < 0)
            fail_.raise(call_);
        return result_;
    }

  private:
    void finish(int64_t timeout_ns) {
        Failure fail;
        ssize_t r = call_nogil([&] { return phxfs_future_wait(f_, timeout_ns); }, fail);
        if (r < 0 && fail.err == ETIMEDOUT && phxfs_future_poll(f_) == 0)
            return; // still running
        done_ = true;
        result_ = r;
        fail_ = std::move(fail);
        release();
    }
    // Frees the future (waiting for it if it still runs: nothing may touch
    // the buffer after) and then gives the buffer back.
    void release() noexcept {
        if (f_) {
            phxfs_future_t f = std::exchange(f_, nullptr);
            if (PyGILState_Check()) {
                nb::gil_scoped_release nogil;
                phxfs_future_free(f);
            } else {
                phxfs_future_free(f);
            }
        }
        buf_.reset();
    }

    phxfs_future_t f_;
    BufferRef buf_;
    const char *call_;
    bool done_ = false;
    int64_t result_ = 0;
    Failure fail_;
};

// A file handle (phxfs_file_t) on a caller's fd.
class Handle {
  public:
    Handle(int fd, int device) : fd_(fd), device_(device) {
        Failure fail;
        int r = call_nogil([&] { return phxfs_file_open(&fh_, device, fd); }, fail);
        if (r < 0)
            fail.raise("phxfs_file_open");
        open_ = true;
    }
    ~Handle() { close(); }
    Handle(const Handle &) = delete;
    Handle &operator=(const Handle &) = delete;

    // Waits for the handle's running requests (futures, batch entries).
    void close() {
        if (!open_)
            return;
        open_ = false;
        if (PyGILState_Check()) {
            nb::gil_scoped_release nogil;
            phxfs_file_close(fh_);
        } else {
            phxfs_file_close(fh_);
        }
    }
    bool closed() const { return !open_; }
    int fd() const { return fd_; }
    int device() const { return device_; }
    // Still the closed handle's key after close(): a batch request on it
    // fails alone with EBADF (keys are never reused).
    phxfs_file_t fh() const { return fh_; }

    int64_t read(nb::handle buf, int64_t file_offset, int64_t size, int64_t buf_offset) {
        check_open();
        BufferRef b = BufferRef::acquire(buf.ptr(), true);
        const uint64_t n = span_of(b, buf_offset, size);
        Failure fail;
        ssize_t r = call_nogil(
            [&] { return phxfs_file_read(fh_, b.data(), buf_offset, n, file_offset); }, fail);
        if (r < 0)
            fail.raise("phxfs_file_read");
        return r;
    }
    int64_t write(nb::handle buf, int64_t file_offset, int64_t size, int64_t buf_offset) {
        check_open();
        BufferRef b = BufferRef::acquire(buf.ptr(), false);
        const uint64_t n = span_of(b, buf_offset, size);
        Failure fail;
        ssize_t r = call_nogil(
            [&] { return phxfs_file_write(fh_, b.data(), buf_offset, n, file_offset); }, fail);
        if (r < 0)
            fail.raise("phxfs_file_write");
        return r;
    }
    Future *read_async(nb::handle buf, int64_t file_offset, int64_t size, int64_t buf_offset) {
        check_open();
        BufferRef b = BufferRef::acquire(buf.ptr(), true);
        const uint64_t n = span_of(b, buf_offset, size);
        phxfs_future_t f = nullptr;
        if (phxfs_file_read_async(fh_, b.data(), buf_offset, n, file_offset, &f) < 0) {
            Failure fail;
            fail.take();
            fail.raise("phxfs_file_read_async");
        }
        return new Future(f, std::move(b), "phxfs_file_read_async");
    }
    Future *write_async(nb::handle buf, int64_t file_offset, int64_t size, int64_t buf_offset) {
        check_open();
        BufferRef b = BufferRef::acquire(buf.ptr(), false);
        const uint64_t n = span_of(b, buf_offset, size);
        phxfs_future_t f = nullptr;
        if (phxfs_file_write_async(fh_, b.data(), buf_offset, n, file_offset, &f) < 0) {
            Failure fail;
            fail.take();
            fail.raise("phxfs_file_write_async");
        }
        return new Future(f, std::move(b), "phxfs_file_write_async");
    }

  private:
    void check_open() const {
        if (!open_)
            throw nb::value_error("I/O operation on a closed phxfs file");
    }
    int fd_;
    int device_;
    bool open_ = false;
    phxfs_file_t fh_ = nullptr;
};

// Many requests in flight (phxfs_batch_t). Each submitted request holds its
// buffer and a caller's tag until it is reaped.
class Batch {
  public:
    explicit Batch(unsigned depth) : depth_(depth) {
        if (phxfs_batch_create(&b_, depth) < 0) {
            Failure fail;
            fail.take();
            fail.raise("phxfs_batch_create");
        }
    }
    ~Batch() { close(); }
    Batch(const Batch &) = delete;
    Batch &operator=(const Batch &) = delete;

    // requests: a sequence of (handle, op, buf, file_offset, size, buf_offset,
    // tag). All or none: a malformed request raises before anything is
    // submitted; EAGAIN when fewer than len(requests) places are free.
    size_t submit(nb::sequence requests) {
        check_open();
        const size_t n = nb::len(requests);
        std::vector<phxfs_io> ios;
        std::vector<std::pair<BufferRef, nb::object>> held;
        ios.reserve(n);
        held.reserve(n);
        for (nb::handle r : requests) {
            nb::tuple t = nb::cast<nb::tuple>(r);
            if (t.size() != 7)
                throw nb::value_error("a batch request is (handle, op, buf, file_offset, size, "
                                      "buf_offset, tag)");
            Handle &h = nb::cast<Handle &>(t[0]);
            const int op = nb::cast<int>(t[1]);
            if (op != PHXFS_OP_READ && op != PHXFS_OP_WRITE)
                throw nb::value_error("op must be PHXFS_OP_READ (0) or PHXFS_OP_WRITE (1)");
            const int64_t f_off = nb::cast<int64_t>(t[3]);
            if (f_off < 0)
                throw nb::value_error("file_offset must not be negative");
            const int64_t buf_off = nb::cast<int64_t>(t[5]);
            BufferRef b = BufferRef::acquire(t[2].ptr(), op == PHXFS_OP_READ);
            const uint64_t size = span_of(b, buf_off, nb::cast<int64_t>(t[4]));
            ios.push_back(phxfs_io{
                h.fh(), static_cast<uint32_t>(op), 0, b.data(), static_cast<uint64_t>(buf_off),
                size, static_cast<uint64_t>(f_off), reinterpret_cast<void *>(next_ + held.size())});
            held.emplace_back(std::move(b), nb::borrow(t[6]));
        }
        if (n == 0)
            return 0;
        Failure fail;
        int r = call_nogil(
            [&] { return phxfs_batch_submit(b_, ios.data(), static_cast<unsigned>(n)); }, fail);
        if (r < 0)
            fail.raise("phxfs_batch_submit");
        for (auto &h : held)
            pending_.emplace(next_++, std::move(h));
        return n;
    }

    // At least min_nr (unless timeout_ns passes; negative: no limit), at
    // most max_nr completions: a list of (tag, result, status, error).
    nb::list reap(unsigned min_nr, unsigned max_nr, int64_t timeout_ns) {
        check_open();
        if (max_nr == 0 || max_nr > depth_)
            max_nr = depth_;
        if (min_nr > pending_.size())
            throw nb::value_error(("cannot wait for " + std::to_string(min_nr) + " completions: " +
                                   std::to_string(pending_.size()) + " requests are in flight")
                                      .c_str());
        std::vector<phxfs_completion> out(max_nr);
        Failure fail;
        int got = call_nogil(
            [&] { return phxfs_batch_reap(b_, out.data(), min_nr, max_nr, timeout_ns); }, fail);
        if (got < 0)
            fail.raise("phxfs_batch_reap");
        nb::list res;
        for (int i = 0; i < got; i++) {
            const phxfs_completion &c = out[i];
            auto it = pending_.find(reinterpret_cast<uint64_t>(c.user_data));
            nb::object tag = nb::none();
            if (it != pending_.end()) {
                tag = std::move(it->second.second);
                pending_.erase(it); // gives the buffer back
            }
            std::string err(c.error, strnlen(c.error, sizeof c.error));
            res.append(nb::make_tuple(tag, c.result, c.status, err));
        }
        return res;
    }

    int cancel() {
        check_open();
        Failure fail;
        int r = call_nogil([&] { return phxfs_batch_cancel(b_); }, fail);
        if (r < 0)
            fail.raise("phxfs_batch_cancel");
        return r;
    }

    // Cancels what has not started, waits for the rest, frees the batch.
    void close() {
        if (!b_)
            return;
        phxfs_batch_t b = std::exchange(b_, nullptr);
        if (PyGILState_Check()) {
            nb::gil_scoped_release nogil;
            phxfs_batch_destroy(b);
        } else {
            phxfs_batch_destroy(b);
        }
        pending_.clear();
    }
    size_t in_flight() const { return pending_.size(); }
    unsigned depth() const { return depth_; }
    bool closed() const { return b_ == nullptr; }

  private:
    void check_open() const {
        if (!b_)
            throw nb::value_error("operation on a closed phxfs batch");
    }
    phxfs_batch_t b_ = nullptr;
    unsigned depth_;
    uint64_t next_ = 1;
    std::unordered_map<uint64_t, std::pair<BufferRef, nb::object>> pending_;
};

// A registered buffer (phxfs_regmem), deregistered by close().
class Registration {
  public:
    Registration(int device, nb::handle buf) : device_(device) {
        buf_ = BufferRef::acquire(buf.ptr(), false);
        if (buf_.size() == 0)
            throw nb::value_error("cannot register an empty buffer");
        Failure fail;
        int r = call_nogil([&] { return phxfs_regmem(device, buf_.data(), buf_.size(), &target_); },
                           fail);
        if (r < 0)
            fail.raise("phxfs_regmem");
        active_ = true;
    }
    ~Registration() {
        if (active_)
            phxfs_deregmem(device_, buf_.data(), buf_.size());
    }
    Registration(const Registration &) = delete;
    Registration &operator=(const Registration &) = delete;

    void close() {
        if (!active_)
            return;
        active_ = false;
        Failure fail;
        int r = call_nogil([&] { return phxfs_deregmem(device_, buf_.data(), buf_.size()); }, fail);
        buf_.reset();
        if (r < 0)
            fail.raise("phxfs_deregmem");
    }
    bool active() const { return active_; }
    uintptr_t address() const { return reinterpret_cast<uintptr_t>(buf_.data()); }
    size_t size() const { return buf_.size(); }
    uintptr_t target() const { return reinterpret_cast<uintptr_t>(target_); }
    int device() const { return device_; }

  private:
    int device_;
    BufferRef buf_;
    void *target_ = nullptr;
    bool active_ = false;
};

template <typename F> void check_call(const char *call, F &&f) {
    Failure fail;
    if (call_nogil(f, fail) < 0)
        fail.raise(call);
}

nb::dict get_config() {
    phxfs_config c{};
    c.size = sizeof c;
    check_call("phxfs_get_config", [&] { return phxfs_get_config(&c); });
    nb::dict d;
    d["mode"] = phxfs_mode_name(static_cast<phxfs_mode>(c.mode));
    d["threads"] = c.threads;
    d["trace"] = c.trace != 0;
    d["chunk_bytes"] = c.chunk_bytes;
    d["staging_bytes"] = c.staging_bytes;
    return d;
}

void set_config(const std::string &mode, uint32_t threads, bool trace, uint64_t chunk_bytes,
                uint64_t staging_bytes) {
    phxfs_config c{};
    c.size = sizeof c;
    if (mode == "auto")
        c.mode = PHXFS_MODE_AUTO;
    else if (mode == "direct")
        c.mode = PHXFS_MODE_DIRECT;
    else if (mode == "compat")
        c.mode = PHXFS_MODE_COMPAT;
    else
        throw nb::value_error(
            ("mode must be 'auto', 'direct' or 'compat', not '" + mode + "'").c_str());
    c.threads = threads;
    c.trace = trace ? 1 : 0;
    c.chunk_bytes = chunk_bytes;
    c.staging_bytes = staging_bytes;
    check_call("phxfs_set_config", [&] { return phxfs_set_config(&c); });
}

nb::dict get_stats(int device) {
    phxfs_stats s{};
    s.size = sizeof s;
    check_call("phxfs_get_stats", [&] { return phxfs_get_stats(device, &s); });
    nb::dict paths;
    for (int p = 0; p < PHXFS_PATH_COUNT; p++) {
        const phxfs_path_stats &ps = s.path[p];
        nb::dict d;
        d["read_bytes"] = ps.read_bytes;
        d["read_calls"] = ps.read_calls;
        d["read_ns"] = ps.read_ns;
        d["write_bytes"] = ps.write_bytes;
        d["write_calls"] = ps.write_calls;
        d["write_ns"] = ps.write_ns;
        paths[phxfs_path_name(static_cast<phxfs_path>(p))] = d;
    }
    nb::dict d;
    d["paths"] = paths;
    d["errors"] = s.errors;
    d["registrations"] = s.registrations;
    d["fallbacks"] = s.fallbacks;
    d["staging_bytes"] = s.staging_bytes;
    return d;
}

nb::dict device_info(int device) {
    phxfs_device_info i{};
    i.size = sizeof i;
    check_call("phxfs_device_get_info", [&] { return phxfs_device_get_info(device, &i); });
    auto str = [](const char *s, size_t n) { return std::string(s, strnlen(s, n)); };
    static const char *kinds[] = {"host", "cuda", "pcibar"};
    static const char *pages[] = {"none", "generic", "p2pdma"};
    nb::dict d;
    d["id"] = device;
    d["kind"] = i.kind < 3 ? kinds[i.kind] : "unknown";
    d["direct"] = i.direct == 1;
    d["kmod_index"] = i.kmod_index;
    d["name"] = str(i.name, sizeof i.name);
    d["pci_bus_id"] = str(i.pci_bus_id, sizeof i.pci_bus_id);
    d["why_not_direct"] = str(i.why_not_direct, sizeof i.why_not_direct);
    d["page_type"] = i.page_type < 3 ? pages[i.page_type] : "unknown";
    d["numa_node"] = i.numa_node;
    return d;
}

} // namespace

NB_MODULE(_phxfs, m) {
    m.doc() = "The libphxfs C API for Python (internal: use the phxfs package).";
    m.attr("__version__") = PHXFS_PY_VERSION;
    m.attr("library_version") =
        nb::make_tuple(PHXFS_VERSION_MAJOR, PHXFS_VERSION_MINOR, PHXFS_VERSION_PATCH);
    m.attr("OP_READ") = static_cast<int>(PHXFS_OP_READ);
    m.attr("OP_WRITE") = static_cast<int>(PHXFS_OP_WRITE);
    m.attr("IO_DONE") = static_cast<int>(PHXFS_IO_DONE);
    m.attr("IO_FAILED") = static_cast<int>(PHXFS_IO_FAILED);
    m.attr("IO_CANCELED") = static_cast<int>(PHXFS_IO_CANCELED);

    nb::class_<Future>(m, "Future")
        .def("done", &Future::done)
        .def("result", &Future::result, "timeout_ns"_a = -1);

    nb::class_<Handle>(m, "Handle")
        .def(nb::init<int, int>(), "fd"_a, "device"_a)
        .def("close", &Handle::close)
        .def_prop_ro("closed", &Handle::closed)
        .def_prop_ro("fd", &Handle::fd)
        .def_prop_ro("device", &Handle::device)
        .def("read", &Handle::read, "buf"_a.none(), "file_offset"_a, "size"_a, "buf_offset"_a)
        .def("write", &Handle::write, "buf"_a.none(), "file_offset"_a, "size"_a, "buf_offset"_a)
        .def("read_async", &Handle::read_async, "buf"_a.none(), "file_offset"_a, "size"_a,
             "buf_offset"_a, nb::rv_policy::take_ownership)
        .def("write_async", &Handle::write_async, "buf"_a.none(), "file_offset"_a, "size"_a,
             "buf_offset"_a, nb::rv_policy::take_ownership);

    nb::class_<Batch>(m, "Batch")
        .def(nb::init<unsigned>(), "depth"_a)
        .def("submit", &Batch::submit, "requests"_a)
        .def("reap", &Batch::reap, "min_nr"_a, "max_nr"_a, "timeout_ns"_a)
        .def("cancel", &Batch::cancel)
        .def("close", &Batch::close)
        .def_prop_ro("in_flight", &Batch::in_flight)
        .def_prop_ro("depth", &Batch::depth)
        .def_prop_ro("closed", &Batch::closed);

    nb::class_<Registration>(m, "Registration")
        .def(nb::init<int, nb::handle>(), "device"_a, "buf"_a.none())
        .def("close", &Registration::close)
        .def_prop_ro("active", &Registration::active)
        .def_prop_ro("address", &Registration::address)
        .def_prop_ro("size", &Registration::size)
        .def_prop_ro("target", &Registration::target)
        .def_prop_ro("device", &Registration::device);

    m.def("open_device", [](int id) { check_call("phxfs_open", [&] { return phxfs_open(id); }); });
    m.def("close_device",
          [](int id) { check_call("phxfs_close", [&] { return phxfs_close(id); }); });
    m.def("device_count", [] {
        int n = 0;
        check_call("phxfs_device_count", [&] { return n = phxfs_device_count(); });
        return n;
    });
    m.def("device_info", &device_info, "device"_a);
    m.def("get_config", &get_config);
    m.def("set_config", &set_config, "mode"_a, "threads"_a, "trace"_a, "chunk_bytes"_a,
          "staging_bytes"_a);
    m.def("get_stats", &get_stats, "device"_a);
    m.def("reset_stats",
          [](int id) { check_call("phxfs_reset_stats", [&] { return phxfs_reset_stats(id); }); });
    m.def("last_error", [] { return std::string(phxfs_last_error()); });
    m.def("path_name", [](int p) {
        if (p < 0 || p >= PHXFS_PATH_COUNT)
            throw nb::value_error("no such path");
        return std::string(phxfs_path_name(static_cast<phxfs_path>(p)));
    });
    m.attr("PATH_COUNT") = static_cast<int>(PHXFS_PATH_COUNT);

    // What phxfs sees of an object's memory, without any I/O: for tests and
    // for users asking "will this buffer work?".
    m.def(
        "inspect_buffer",
        [](nb::handle obj, bool writable, const std::string &via) {
            BufferRef b = BufferRef::acquire(obj.ptr(), writable, via_from(via));
            nb::dict d;
            d["ptr"] = reinterpret_cast<uintptr_t>(b.data());
            d["size"] = b.size();
            d["kind"] = phxfs_py::mem_kind_name(b.kind());
            d["device"] = b.device();
            d["readonly"] = b.readonly();
            d["via"] = phxfs_py::via_name(b.via());
            return d;
        },
        "obj"_a.none(), "writable"_a = false, "via"_a = "auto");
}

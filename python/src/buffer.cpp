// buffer.cpp - see buffer.hpp.
#include "buffer.hpp"

#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>

#include <dlfcn.h>

#include <cerrno>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

namespace nb = nanobind;

namespace phxfs_py {

// The DLPack ABI (dlpack.h, v1.0), the parts a consumer reads.
namespace dl {
enum DeviceType : int32_t { kCPU = 1, kCUDA = 2, kCUDAHost = 3, kCUDAManaged = 13 };
struct Device {
    int32_t device_type;
    int32_t device_id;
};
struct DataType {
    uint8_t code;
    uint8_t bits;
    uint16_t lanes;
};
struct Tensor {
    void *data;
    Device device;
    int32_t ndim;
    DataType dtype;
    int64_t *shape;
    int64_t *strides;
    uint64_t byte_offset;
};
struct ManagedTensor {
    Tensor dl_tensor;
    void *manager_ctx;
    void (*deleter)(ManagedTensor *);
};
struct Version {
    uint32_t major;
    uint32_t minor;
};
struct ManagedTensorVersioned {
    Version version;
    void *manager_ctx;
    void (*deleter)(ManagedTensorVersioned *);
    uint64_t flags;
    Tensor dl_tensor;
};
constexpr uint64_t kFlagReadOnly = 1ULL << 0;
constexpr uint64_t kFlagIsCopied = 1ULL << 1;
} // namespace dl

const char *mem_kind_name(MemKind k) {
    switch (k) {
    case MemKind::host:
        return "host";
    case MemKind::cuda:
        return "cuda";
    case MemKind::cuda_host:
        return "cuda_host";
    case MemKind::cuda_managed:
        return "cuda_managed";
    }
    return "?";
}

const char *via_name(Via v) {
    switch (v) {
    case Via::automatic:
        return "none";
    case Via::cuda_array_interface:
        return "cuda_array_interface";
    case Via::dlpack:
        return "dlpack";
    case Via::buffer:
        return "buffer";
    }
    return "?";
}

void raise_os(int err, const std::string &what) {
    PyObject *args = Py_BuildValue("(is)", err, what.c_str());
    if (args) {
        PyErr_SetObject(PyExc_OSError, args);
        Py_DECREF(args);
    }
    throw nb::python_error();
}

namespace {

// The few CUDA driver calls a consumer needs to wait for a producer's
// stream, looked up once from the driver loaded at run time (never linked:
// the package loads on machines without CUDA).
struct CudaDriver {
    using ctx_t = void *;
    int (*stream_sync)(void *) = nullptr;
    int (*ctx_get_current)(ctx_t *) = nullptr;
    int (*device_get)(int *, int) = nullptr;
    int (*primary_retain)(ctx_t *, int) = nullptr;
    int (*primary_release)(int) = nullptr;
    int (*ctx_push)(ctx_t) = nullptr;
    int (*ctx_pop)(ctx_t *) = nullptr;
    int (*pointer_attr)(void *, int, uintptr_t) = nullptr;
    bool ok = false;

    static const CudaDriver &get() {
        static const CudaDriver d = [] {
            CudaDriver d;
            void *lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
            if (!lib)
                return d;
            auto sym = [lib](auto &fn, const char *name) {
                fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(dlsym(lib, name));
                return fn != nullptr;
            };
            d.ok = sym(d.stream_sync, "cuStreamSynchronize") &&
                   sym(d.ctx_get_current, "cuCtxGetCurrent") && sym(d.device_get, "cuDeviceGet") &&
                   sym(d.primary_retain, "cuDevicePrimaryCtxRetain") &&
                   sym(d.primary_release, "cuDevicePrimaryCtxRelease_v2") &&
                   sym(d.ctx_push, "cuCtxPushCurrent_v2") && sym(d.ctx_pop, "cuCtxPopCurrent_v2") &&
                   sym(d.pointer_attr, "cuPointerGetAttribute");
            return d;
        }();
        return d;
    }
};

constexpr int kPointerAttributeDeviceOrdinal = 9; // CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL

} // namespace

void cuda_stream_synchronize(uintptr_t stream, int device, const void *ptr) {
    const CudaDriver &cu = CudaDriver::get();
    if (!cu.ok)
        raise_os(ENODEV, "a CUDA object was passed but the CUDA driver (libcuda.so.1) cannot be "
                         "loaded to synchronize its stream");
    // 1 and 2 (the legacy and per-thread default streams) are the current
    // context's: where this thread has none, the memory's GPU's primary
    // context (the one PyTorch, CuPy and JAX use) is made current around it.
    const bool default_stream = stream == 1 || stream == 2;
    int rc = 0;
    std::string what;
    {
        nb::gil_scoped_release nogil;
        void *cur = nullptr;
        if (default_stream && (cu.ctx_get_current(&cur) != 0 || !cur)) {
            int ordinal = device;
            if (ordinal < 0 && ptr &&
                cu.pointer_attr(&ordinal, kPointerAttributeDeviceOrdinal,
                                reinterpret_cast<uintptr_t>(ptr)) != 0)
                ordinal = -1;
            int dev = 0;
            void *ctx = nullptr;
            if (ordinal < 0) {
                rc = -1;
                what = "no CUDA context is current and the memory's GPU is unknown";
            } else if ((rc = cu.device_get(&dev, ordinal)) != 0 ||
                       (rc = cu.primary_retain(&ctx, dev)) != 0) {
                what = "cannot take GPU " + std::to_string(ordinal) + "'s primary context";
            } else {
                if ((rc = cu.ctx_push(ctx)) == 0) {
                    rc = cu.stream_sync(reinterpret_cast<void *>(stream));
                    void *popped = nullptr;
                    cu.ctx_pop(&popped);
                }
                cu.primary_release(dev);
            }
        } else {
            rc = cu.stream_sync(reinterpret_cast<void *>(stream));
        }
    }
    if (rc != 0)
        raise_os(EIO, "cuStreamSynchronize(" + std::to_string(stream) + ") failed" +
                          (what.empty() ? "" : ": " + what) + " (CUresult " + std::to_string(rc) +
                          ")");
}

namespace {

bool has_attr(PyObject *obj, const char *name) {
    int r = PyObject_HasAttrString(obj, name);
    return r == 1;
}

// Product of a shape, refusing negatives and overflow.
size_t checked_elements(const int64_t *shape, int ndim, const char *what) {
    size_t n = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0)
            throw nb::value_error((std::string(what) + ": negative dimension").c_str());
        if (__builtin_mul_overflow(n, static_cast<size_t>(shape[i]), &n))
            throw nb::value_error((std::string(what) + ": size overflows").c_str());
    }
    return n;
}

// strides in items (DLPack) or bytes (CAI, item = itemsize): C order?
bool c_contiguous(const int64_t *shape, const int64_t *strides, int ndim, int64_t item) {
    if (!strides)
        return true;
    int64_t expect = item;
    for (int i = ndim - 1; i >= 0; i--) {
        if (shape[i] == 0)
            return true; // empty: nothing is read or written
        if (shape[i] != 1 && strides[i] != expect)
            return false;
        expect *= shape[i];
    }
    return true;
}

} // namespace

void BufferRef::steal(BufferRef &o) noexcept {
    data_ = o.data_;
    size_ = o.size_;
    kind_ = o.kind_;
    device_ = o.device_;
    readonly_ = o.readonly_;
    via_ = std::exchange(o.via_, Via::automatic);
    view_ = o.view_;
    o.view_ = Py_buffer{};
    owner_ = std::exchange(o.owner_, nullptr);
    dl_managed_ = std::exchange(o.dl_managed_, nullptr);
    dl_versioned_ = o.dl_versioned_;
}

void BufferRef::reset() noexcept {
    if (via_ == Via::buffer && view_.obj)
        PyBuffer_Release(&view_);
    view_ = Py_buffer{};
    if (dl_managed_) {
        if (dl_versioned_) {
            auto *m = static_cast<dl::ManagedTensorVersioned *>(dl_managed_);
            if (m->deleter)
                m->deleter(m);
        } else {
            auto *m = static_cast<dl::ManagedTensor *>(dl_managed_);
            if (m->deleter)
                m->deleter(m);
        }
        dl_managed_ = nullptr;
    }
    Py_CLEAR(owner_);
    via_ = Via::automatic;
    data_ = nullptr;
    size_ = 0;
}

namespace {

BufferRef from_buffer(PyObject *obj, bool writable);
BufferRef from_cai(PyObject *obj, bool writable);
BufferRef from_dlpack(PyObject *obj, bool writable);

} // namespace

// The friend-free way to fill a BufferRef from the helpers below.
struct BufferRefBuilder {
    static void set(BufferRef &b, void *data, size_t size, MemKind kind, int device, bool ro,
                    Via via) {
        b.data_ = data;
        b.size_ = size;
        b.kind_ = kind;
        b.device_ = device;
        b.readonly_ = ro;
        b.via_ = via;
    }
    static Py_buffer &view(BufferRef &b) { return b.view_; }
    static void own(BufferRef &b, PyObject *owner) { b.owner_ = owner; }
    static void dl(BufferRef &b, void *managed, bool versioned) {
        b.dl_managed_ = managed;
        b.dl_versioned_ = versioned;
    }
};

namespace {

BufferRef from_buffer(PyObject *obj, bool writable) {
    BufferRef b;
    Py_buffer &v = BufferRefBuilder::view(b);
    if (PyObject_GetBuffer(obj, &v, PyBUF_C_CONTIGUOUS) != 0) {
        nb::python_error e; // takes the producer's error
        throw nb::value_error(
            ("buffer is not usable (it must be C-contiguous): " + std::string(e.what())).c_str());
    }
    // From here b owns the view; any throw releases it.
    BufferRefBuilder::set(b, v.buf, static_cast<size_t>(v.len), MemKind::host, -1, v.readonly != 0,
                          Via::buffer);
    if (writable && v.readonly)
        throw nb::type_error(("a read needs a writable buffer; this " +
                              std::string(Py_TYPE(obj)->tp_name) + " is read-only")
                                 .c_str());
    return b;
}

BufferRef from_cai(PyObject *obj, bool writable) {
    nb::object cai = nb::steal(PyObject_GetAttrString(obj, "__cuda_array_interface__"));
    if (!cai.is_valid())
        throw nb::python_error();
    if (!nb::isinstance<nb::dict>(cai))
        throw nb::value_error("__cuda_array_interface__ is not a dict");
    nb::dict d = nb::borrow<nb::dict>(cai);
    for (const char *key : {"shape", "typestr", "data", "version"})
        if (!d.contains(key))
            throw nb::value_error(
                (std::string("__cuda_array_interface__ lacks '") + key + "'").c_str());

    // data: (pointer, read_only)
    nb::object data = d["data"];
    if (!nb::isinstance<nb::tuple>(data) || nb::len(data) != 2)
        throw nb::value_error("__cuda_array_interface__['data'] must be a (pointer, read_only) "
                              "tuple");
    nb::tuple dt = nb::borrow<nb::tuple>(data);
    if (!nb::isinstance<nb::int_>(dt[0]) || !nb::isinstance<nb::bool_>(dt[1]))
        throw nb::value_error("__cuda_array_interface__['data'] must be (int, bool)");
    const uintptr_t ptr = nb::cast<uintptr_t>(dt[0]);
    const bool ro = nb::cast<bool>(dt[1]);

    // typestr: "<f4", "|u1", ...: the item size is the number after the kind.
    nb::object ts = d["typestr"];
    if (!nb::isinstance<nb::str>(ts))
        throw nb::value_error("__cuda_array_interface__['typestr'] must be a str");
    const std::string typestr = nb::cast<std::string>(ts);
    if (typestr.size() < 3 || (typestr[0] != '<' && typestr[0] != '>' && typestr[0] != '|'))
        throw nb::value_error(("__cuda_array_interface__: bad typestr '" + typestr + "'").c_str());
    int64_t item = 0;
    for (size_t i = 2; i < typestr.size(); i++) {
        if (typestr[i] < '0' || typestr[i] > '9' || item > (1 << 20))
            throw nb::value_error(
                ("__cuda_array_interface__: bad typestr '" + typestr + "'").c_str());
        item = item * 10 + (typestr[i] - '0');
    }
    if (item <= 0)
        throw nb::value_error(("__cuda_array_interface__: bad typestr '" + typestr + "'").c_str());

    // shape and strides (bytes; None or absent: C order)
    nb::object shape_o = d["shape"];
    if (!nb::isinstance<nb::tuple>(shape_o))
        throw nb::value_error("__cuda_array_interface__['shape'] must be a tuple");
    std::vector<int64_t> shape;
    for (nb::handle h : shape_o) {
        if (!nb::isinstance<nb::int_>(h))
            throw nb::value_error("__cuda_array_interface__['shape'] must hold ints");
        shape.push_back(nb::cast<int64_t>(h));
    }
    std::vector<int64_t> strides;
    if (d.contains("strides") && !d["strides"].is_none()) {
        nb::object st = d["strides"];
        if (!nb::isinstance<nb::tuple>(st) || nb::len(st) != shape.size())
            throw nb::value_error("__cuda_array_interface__['strides'] must be a tuple as long "
                                  "as the shape");
        for (nb::handle h : st) {
            if (!nb::isinstance<nb::int_>(h))
                throw nb::value_error("__cuda_array_interface__['strides'] must hold ints");
            strides.push_back(nb::cast<int64_t>(h));
        }
    }
    if (d.contains("mask") && !d["mask"].is_none())
        throw nb::value_error("__cuda_array_interface__: masked arrays are not supported");
    const int ndim = static_cast<int>(shape.size());
    size_t n = checked_elements(shape.data(), ndim, "__cuda_array_interface__");
    if (__builtin_mul_overflow(n, static_cast<size_t>(item), &n))
        throw nb::value_error("__cuda_array_interface__: size overflows");
    if (!c_contiguous(shape.data(), strides.empty() ? nullptr : strides.data(), ndim, item))
        throw nb::value_error("__cuda_array_interface__: the array is not C-contiguous");
    if (writable && ro)
        throw nb::type_error("a read needs a writable buffer; this __cuda_array_interface__ "
                             "array is read-only");
    if (ptr == 0 && n != 0)
        throw nb::value_error("__cuda_array_interface__: null data pointer");

    // CAI v3: the producer names the stream its work is queued on (None: no
    // synchronization needed; 0 is disallowed by the protocol).
    if (d.contains("stream") && !d["stream"].is_none()) {
        nb::object s = d["stream"];
        if (!nb::isinstance<nb::int_>(s) || nb::cast<int64_t>(s) == 0)
            throw nb::value_error("__cuda_array_interface__['stream'] must be None or a "
                                  "non-zero int");
        cuda_stream_synchronize(nb::cast<uintptr_t>(s), -1, reinterpret_cast<void *>(ptr));
    }

    BufferRef b;
    BufferRefBuilder::set(b, reinterpret_cast<void *>(ptr), n, MemKind::cuda, -1, ro,
                          Via::cuda_array_interface);
    BufferRefBuilder::own(b, obj);
    Py_INCREF(obj);
    return b;
}

// (device_type, device_id) from __dlpack_device__().
std::pair<int, int> dlpack_device(PyObject *obj) {
    nb::object dev = nb::steal(PyObject_CallMethod(obj, "__dlpack_device__", nullptr));
    if (!dev.is_valid())
        throw nb::python_error();
    if (!nb::isinstance<nb::tuple>(dev) || nb::len(dev) != 2)
        throw nb::value_error("__dlpack_device__() must return (device_type, device_id)");
    return {nb::cast<int>(nb::borrow<nb::tuple>(dev)[0]),
            nb::cast<int>(nb::borrow<nb::tuple>(dev)[1])};
}

BufferRef from_dlpack(PyObject *obj, bool writable) {
    int dev_type = dl::kCPU, dev_id = 0;
    if (has_attr(obj, "__dlpack_device__"))
        std::tie(dev_type, dev_id) = dlpack_device(obj);
    const bool on_cuda = dev_type == dl::kCUDA || dev_type == dl::kCUDAManaged;

    nb::object method = nb::steal(PyObject_GetAttrString(obj, "__dlpack__"));
    if (!method.is_valid())
        throw nb::python_error();
    // Ask for a versioned capsule (it says read-only and copied); producers
    // older than DLPack 1.0 refuse max_version with TypeError.
    nb::kwargs kw;
    if (on_cuda)
        kw["stream"] = 1; // legacy default stream: synchronized below
    kw["max_version"] = nb::make_tuple(1, 0);
    nb::object cap;
    try {
        cap = method(**kw);
    } catch (nb::python_error &e) {
        if (!e.matches(PyExc_TypeError))
            throw;
        nb::kwargs kw_old;
        if (on_cuda)
            kw_old["stream"] = 1;
        cap = method(**kw_old);
    }
    if (!PyCapsule_CheckExact(cap.ptr()))
        throw nb::value_error("__dlpack__() did not return a capsule");

    const char *name = PyCapsule_GetName(cap.ptr());
    const bool versioned = name && std::string(name) == "dltensor_versioned";
    if (!versioned && !(name && std::string(name) == "dltensor"))
        throw nb::value_error((std::string("__dlpack__() returned a capsule that is not an "
                                           "unused DLPack tensor (name '") +
                               (name ? name : "") + "')")
                                  .c_str());
    void *managed = PyCapsule_GetPointer(cap.ptr(), name);
    if (!managed)
        throw nb::python_error();

    // Ours now: the capsule is renamed so that its destructor leaves the
    // tensor alone, and BufferRef calls the deleter when done.
    if (PyCapsule_SetName(cap.ptr(), versioned ? "used_dltensor_versioned" : "used_dltensor"))
        throw nb::python_error();
    BufferRef b;
    BufferRefBuilder::own(b, cap.release().ptr());
    BufferRefBuilder::dl(b, managed, versioned);

    uint64_t flags = 0;
    const dl::Tensor *t;
    if (versioned) {
        auto *m = static_cast<dl::ManagedTensorVersioned *>(managed);
        if (m->version.major != 1)
            throw nb::value_error(("DLPack tensor of unsupported version " +
                                   std::to_string(m->version.major) + "." +
                                   std::to_string(m->version.minor))
                                      .c_str());
        flags = m->flags;
        t = &m->dl_tensor;
    } else {
        t = &static_cast<dl::ManagedTensor *>(managed)->dl_tensor;
    }

    MemKind kind;
    switch (t->device.device_type) {
    case dl::kCPU:
        kind = MemKind::host;
        break;
    case dl::kCUDA:
        kind = MemKind::cuda;
        break;
    case dl::kCUDAHost:
        kind = MemKind::cuda_host;
        break;
    case dl::kCUDAManaged:
        kind = MemKind::cuda_managed;
        break;
    default:
        throw nb::value_error(
            ("DLPack tensor on an unsupported device type " + std::to_string(t->device.device_type))
                .c_str());
    }
    if (t->ndim < 0 || (t->ndim > 0 && !t->shape))
        throw nb::value_error("DLPack tensor with a malformed shape");
    const uint64_t bits = uint64_t(t->dtype.bits) * t->dtype.lanes;
    if (bits == 0 || bits % 8 != 0)
        throw nb::value_error(("DLPack tensor of a sub-byte or empty element type (" +
                               std::to_string(bits) + " bits)")
                                  .c_str());
    size_t n = checked_elements(t->shape, t->ndim, "DLPack tensor");
    if (__builtin_mul_overflow(n, static_cast<size_t>(bits / 8), &n))
        throw nb::value_error("DLPack tensor: size overflows");
    if (!c_contiguous(t->shape, t->strides, t->ndim, 1))
        throw nb::value_error("DLPack tensor is not C-contiguous");
    const bool ro = (flags & dl::kFlagReadOnly) != 0;
    if (writable && ro)
        throw nb::type_error("a read needs a writable buffer; this DLPack tensor is read-only");
    if (writable && (flags & dl::kFlagIsCopied))
        throw nb::type_error("a read needs the tensor's own memory; its producer gave a copy");
    void *data = static_cast<char *>(t->data) + t->byte_offset;
    if (!t->data && n != 0)
        throw nb::value_error("DLPack tensor with a null data pointer");
    BufferRefBuilder::set(b, data, n, kind, kind == MemKind::host ? -1 : t->device.device_id, ro,
                          Via::dlpack);
    // The producer ordered its work before the legacy default stream.
    if (on_cuda)
        cuda_stream_synchronize(1, t->device.device_id, data);
    return b;
}

} // namespace

BufferRef BufferRef::acquire(PyObject *obj, bool writable, Via via) {
    if (via == Via::automatic) {
        if (has_attr(obj, "__cuda_array_interface__"))
            via = Via::cuda_array_interface;
        else if (has_attr(obj, "__dlpack__") && has_attr(obj, "__dlpack_device__") &&
                 dlpack_device(obj).first != dl::kCPU)
            via = Via::dlpack;
        else if (PyObject_CheckBuffer(obj))
            via = Via::buffer;
        else if (has_attr(obj, "__dlpack__"))
            via = Via::dlpack;
        else
            throw nb::type_error(("phxfs needs a buffer (buffer protocol, "
                                  "__cuda_array_interface__ or DLPack), not " +
                                  std::string(Py_TYPE(obj)->tp_name))
                                     .c_str());
    }
    switch (via) {
    case Via::cuda_array_interface:
        return from_cai(obj, writable);
    case Via::dlpack:
        return from_dlpack(obj, writable);
    case Via::buffer:
        return from_buffer(obj, writable);
    case Via::automatic:
        break;
    }
    throw nb::type_error("unreachable");
}

} // namespace phxfs_py

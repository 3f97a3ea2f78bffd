// buffer.hpp - the memory of a Python object, held while libphxfs uses it.
//
// Three ways in, tried in this order:
//   1. __cuda_array_interface__ (CuPy, Numba, PyTorch CUDA tensors): device
//      pointer and read-only flag from the dict; the producer's stream, when
//      it names one, is synchronized before any I/O (CAI v3).
//   2. DLPack (__dlpack__/__dlpack_device__) for objects on a non-CPU
//      device (PyTorch, CuPy, JAX): on CUDA the tensor is asked for with
//      stream=1 (the legacy default stream), which is then synchronized, as
//      the DLPack protocol prescribes for the consumer.
//   3. The buffer protocol (numpy, bytearray, memoryview, mmap, array), and
//      last DLPack again for host objects without it (a CPU torch tensor).
// A buffer must be C-contiguous. Reads into a buffer need it writable.
#pragma once

#include <Python.h>

#include <cstddef>
#include <cstdint>
#include <string>

namespace phxfs_py {

enum class MemKind { host, cuda, cuda_host, cuda_managed };
enum class Via { automatic, cuda_array_interface, dlpack, buffer };

const char *mem_kind_name(MemKind k);
const char *via_name(Via v);

class BufferRef {
  public:
    BufferRef() = default;
    // Takes obj's memory; throws nb::type_error (unsupported, read-only
    // when writable), nb::value_error (not contiguous, malformed interface)
    // or the producer's own exception. Needs the GIL.
    static BufferRef acquire(PyObject *obj, bool writable, Via via = Via::automatic);
    ~BufferRef() { reset(); }
    BufferRef(BufferRef &&o) noexcept { steal(o); }
    BufferRef &operator=(BufferRef &&o) noexcept {
        if (this != &o) {
            reset();
            steal(o);
        }
        return *this;
    }
    BufferRef(const BufferRef &) = delete;
    BufferRef &operator=(const BufferRef &) = delete;

    // Gives the memory back to its owner (needs the GIL).
    void reset() noexcept;
    bool empty() const { return via_ == Via::automatic; }

    void *data() const { return data_; }
    size_t size() const { return size_; }
    MemKind kind() const { return kind_; }
    int device() const { return device_; } // -1: not known (host, or CAI)
    bool readonly() const { return readonly_; }
    Via via() const { return via_; }

  private:
    friend struct BufferRefBuilder; // buffer.cpp's ways in fill these
    void steal(BufferRef &o) noexcept;

    void *data_ = nullptr;
    size_t size_ = 0;
    MemKind kind_ = MemKind::host;
    int device_ = -1;
    bool readonly_ = false;
    Via via_ = Via::automatic; // automatic: holds nothing

    Py_buffer view_{};           // Via::buffer
    PyObject *owner_ = nullptr;  // a strong reference: the CAI object or the DLPack capsule
    void *dl_managed_ = nullptr; // DLManagedTensor(Versioned) whose deleter we owe
    bool dl_versioned_ = false;
};

// Raises OSError(err, what): Python picks the subclass from errno
// (FileNotFoundError, TimeoutError, ...), and .errno/.strerror are set.
[[noreturn]] void raise_os(int err, const std::string &what);

// Waits for a CUDA stream (a CUstream as an integer; 1 legacy, 2 per-thread
// default) through the driver loaded at run time. device (-1: unknown, then
// found from ptr) names the GPU whose primary context holds a default
// stream where the thread has no current context. Throws OSError(ENODEV)
// where there is no CUDA driver, OSError(EIO) when the wait fails.
// Releases the GIL while it waits.
void cuda_stream_synchronize(uintptr_t stream, int device, const void *ptr);

} // namespace phxfs_py

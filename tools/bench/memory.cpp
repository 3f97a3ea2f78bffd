// memory.cpp - the per-thread I/O buffers of phxfs-bench.
#include "memory.hpp"

#include <sys/mman.h>

#include <cerrno>
#include <cstring>
#include <new>
#include <stdexcept>

namespace phxbench {

HostBuffer alloc_host(size_t n) {
    const size_t len = (n + 4095) / 4096 * 4096;
    void *p = std::aligned_alloc(4096, len ? len : 4096);
    if (!p)
        throw std::bad_alloc();
    return HostBuffer(static_cast<uint8_t *>(p));
}

phxfs_device_info device_info(int device) {
    phxfs_device_info info{};
    info.size = sizeof info;
    if (phxfs_device_get_info(device, &info) != 0)
        throw std::runtime_error("device " + std::to_string(device) + ": " + phxfs_last_error());
    return info;
}

IoBuffer::IoBuffer(int device, MemType mem, size_t n, bool register_it) : device_(device), n_(n) {
    const phxfs_device_info info = device_info(device);
    const bool cuda_dev = info.kind == PHXFS_DEVICE_CUDA;
    if (info.kind == PHXFS_DEVICE_PCIBAR)
        throw std::runtime_error("device " + std::to_string(device) +
                                 " is a PCI BAR; phxfs-bench moves CUDA or host memory only");
    if (cuda_dev && mem != MemType::pageable) {
        // CUDA device N of phxfs is CUDA ordinal N.
        cuda_ = phxtools::Cuda::get(device);
        if (!cuda_)
            throw std::runtime_error(
                "device " + std::to_string(device) +
                " is a GPU but the tool cannot use CUDA: " + phxtools::Cuda::why_unavailable());
        if (mem == MemType::device) {
            cuda_mem_ = phxtools::cuda_alloc_device(*cuda_, n);
            gpu_ = true;
        } else {
            cuda_mem_ = phxtools::cuda_alloc_pinned(*cuda_, n);
        }
        ptr_ = cuda_mem_.get();
    } else {
        // Host memory: the device itself on a machine without GPU, or the
        // pinned/pageable buffers asked for. Pinned without CUDA is mlock'd.
        host_mem_ = alloc_host(n);
        ptr_ = host_mem_.get();
        std::memset(ptr_, 0, n); // touch every page before the clock runs
        if (mem == MemType::pinned)
            locked_ = mlock(ptr_, n) == 0;
    }
    if (!register_it)
        return;
    void *target = nullptr;
    if (phxfs_regmem(device_, ptr_, n_, &target) == 0) {
        registered_ = true;
    } else if (errno == EFAULT && !gpu_) {
        // Host memory on a GPU device: libphxfs moves it unregistered.
        why_unregistered_ = phxfs_last_error();
    } else {
        throw std::runtime_error(std::string("phxfs_regmem of ") + std::to_string(n_) +
                                 " bytes failed: " + phxfs_last_error());
    }
}

IoBuffer::~IoBuffer() {
    if (registered_)
        phxfs_deregmem(device_, ptr_, n_);
    if (locked_)
        munlock(ptr_, n_);
}

void IoBuffer::to_host(void *dst, size_t off, size_t n) const {
    const auto *src = static_cast<const uint8_t *>(ptr_) + off;
    if (gpu_)
        cuda_->copy_to_host(dst, src, n);
    else
        std::memcpy(dst, src, n);
}

void IoBuffer::from_host(const void *src, size_t off, size_t n) {
    auto *dst = static_cast<uint8_t *>(ptr_) + off;
    if (gpu_)
        cuda_->copy_to_device(dst, src, n);
    else
        std::memcpy(dst, src, n);
}

} // namespace phxbench

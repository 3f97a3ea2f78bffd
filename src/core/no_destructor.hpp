// A process-wide object that is never destroyed: objects that own CUDA
// resources or threads must not be torn down by static destructors, which
// run after the CUDA driver's own exit handlers.
#pragma once

#include <new>
#include <utility>

namespace phxfs::core {

template <typename T> class NoDestructor {
  public:
    template <typename... Args> explicit NoDestructor(Args &&...args) {
        new (storage_) T(std::forward<Args>(args)...);
    }
    T &operator*() { return *std::launder(reinterpret_cast<T *>(storage_)); }
    T *operator->() { return &**this; }

  private:
    alignas(T) unsigned char storage_[sizeof(T)];
};

} // namespace phxfs::core

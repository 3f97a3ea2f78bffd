// File handles: a file opened once for Phoenix on one device, what every
// request on it would otherwise re-derive (the fd's flags, file type,
// direct-I/O alignment, the O_DIRECT and buffered twins) kept for its life.
//
// Lifetimes. The table holds each open handle by shared_ptr; a call looks
// its handle up and holds it (a Use) for as long as the request runs, on the
// caller's thread or a worker's (futures, batches). Closing takes the handle
// out of the table, so that no new request finds it, and waits until no Use
// is left: the caller's fd may be closed, and its number reused, the moment
// phxfs_file_close returns, so nothing of the library may touch it after.
#pragma once

#include "engine/fileio.hpp"

#include <atomic>
#include <cstdint>
#include <memory>

namespace phxfs::core {

class FileHandle {
  public:
    // Inspects fd (throws as inspect_fd does).
    FileHandle(int device_id, int fd) : device_id_(device_id), file_(fd) {}
    FileHandle(const FileHandle &) = delete;
    FileHandle &operator=(const FileHandle &) = delete;

    int device_id() const { return device_id_; }
    File &file() { return file_; }

    // A request's hold on the handle.
    class Use {
      public:
        Use() = default;
        explicit Use(std::shared_ptr<FileHandle> h);
        Use(Use &&o) noexcept = default;
        Use &operator=(Use &&o) noexcept;
        Use(const Use &) = delete;
        Use &operator=(const Use &) = delete;
        ~Use() { release(); }
        // Another hold on the same handle (a batch's requests on one file
        // take theirs without looking the handle up again).
        Use another() const { return Use(h_); }
        FileHandle *operator->() const { return h_.get(); }
        FileHandle &operator*() const { return *h_; }
        explicit operator bool() const { return h_ != nullptr; }

      private:
        void release();
        std::shared_ptr<FileHandle> h_;
    };

  private:
    friend class HandleTable;
    const int device_id_;
    File file_;
    std::atomic<unsigned> uses_{0}; // waited on by close()
};

// The process's open handles, by key (the C API's opaque phxfs_file_t).
class HandleTable {
  public:
    // Opens a handle for fd on device_id; returns its key.
    uintptr_t open(int device_id, int fd);
    // A Use of the handle with that key, or throws EBADF.
    FileHandle::Use use(uintptr_t key);
    // Takes the handle out (EBADF if there is none) and waits for its uses.
    void close(uintptr_t key);
};

HandleTable &handles();
// In a child of fork(): no handles (the parent's are left untouched).
void handles_after_fork_child();

} // namespace phxfs::core

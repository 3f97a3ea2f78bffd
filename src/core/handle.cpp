#include "core/handle.hpp"

#include "core/device.hpp"
#include "core/error.hpp"
#include "core/fault.hpp"
#include "core/fork.hpp"

#include <atomic>
#include <unordered_map>

namespace phxfs::core {

FileHandle::Use::Use(std::shared_ptr<FileHandle> h) : h_(std::move(h)) {
    if (h_)
        h_->uses_.fetch_add(1);
}

FileHandle::Use &FileHandle::Use::operator=(Use &&o) noexcept {
    if (this != &o) {
        release();
        h_ = std::move(o.h_);
    }
    return *this;
}

void FileHandle::Use::release() {
    if (!h_)
        return;
    if (h_->uses_.fetch_sub(1) == 1)
        h_->uses_.notify_all();
    h_.reset();
}

namespace {

// The table's state. A child of fork() gets a new, empty one: the parent's
// handles may be in use by threads that do not exist in the child (whose
// closes would wait for them forever), so they are left as they are.
struct Table {
    std::mutex m;
    std::unordered_map<uintptr_t, std::shared_ptr<FileHandle>> open;
};
Table *the_table = new Table;
// Keys are never reused, so that a closed handle's key finds nothing rather
// than a newer handle on another file.
std::atomic<uintptr_t> next_key{1};

} // namespace

uintptr_t HandleTable::open(int device_id, int fd) {
    device(device_id); // ENODEV before anything else
    install_fork_handler();
    auto h = std::make_shared<FileHandle>(device_id, fd);
    const uintptr_t key = next_key.fetch_add(1);
    std::lock_guard lock(the_table->m);
    the_table->open.emplace(key, std::move(h));
    return key;
}

FileHandle::Use HandleTable::use(uintptr_t key) {
    FileHandle::Use u;
    {
        std::lock_guard lock(the_table->m);
        auto it = the_table->open.find(key);
        if (it == the_table->open.end())
            fail(EBADF, "not an open file handle (closed already, or never opened)");
        // Counted before the lock goes: a close() that takes the handle out
        // after this finds the hold and waits for it. (Counted after, a
        // close could return in between, and the call go on with an fd the
        // caller has closed and perhaps reused.)
        u = FileHandle::Use(it->second);
    }
    fault::at(fault::Site::handle_use); // tests: a call held between its lookup and its I/O
    return u;
}

void HandleTable::close(uintptr_t key) {
    std::shared_ptr<FileHandle> h;
    {
        std::lock_guard lock(the_table->m);
        auto it = the_table->open.find(key);
        if (it == the_table->open.end())
            fail(EBADF, "not an open file handle (closed already, or never opened)");
        h = std::move(it->second);
        the_table->open.erase(it);
    }
    for (unsigned u; (u = h->uses_.load()) != 0;)
        h->uses_.wait(u);
}

HandleTable &handles() {
    static HandleTable t;
    return t;
}

void handles_after_fork_child() {
    the_table = new Table; // the parent's is left as it is
}

} // namespace phxfs::core

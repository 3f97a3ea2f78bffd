// Batches: many reads and writes in flight at once, submitted and reaped in
// groups (phxfs_batch_*).
//
// A batch owns `depth` slots, made once; a request takes a free slot at
// submit, waits in the pending ring until a participant of the batch's
// executor runs it, waits in the done ring and frees its slot when reaped.
// Nothing is allocated per request. A running request holds its handle (a
// Use), so closing a handle waits for its running requests, not for their
// reaping; one not started by then fails with EBADF, unless the request
// before it in its group is on the same handle and took its hold (it takes
// its own from that one, and close waits for it too).
#pragma once

#include "core/handle.hpp"
#include "core/request.hpp"

#include <phxfs/phxfs.h>

#include <sys/types.h>

#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace phxfs::core {

// A fixed-capacity FIFO of slot numbers.
class SlotRing {
  public:
    explicit SlotRing(unsigned capacity) : v_(capacity) {}
    bool empty() const { return n_ == 0; }
    unsigned size() const { return n_; }
    void push(uint32_t s) { v_[(head_ + n_++) % v_.size()] = s; }
    uint32_t front() const { return v_[head_]; }
    uint32_t pop() {
        const uint32_t s = v_[head_];
        head_ = (head_ + 1) % v_.size();
        --n_;
        return s;
    }

  private:
    std::vector<uint32_t> v_;
    unsigned head_ = 0, n_ = 0;
};

class Batch {
  public:
    static constexpr unsigned kMaxDepth = 65536;

    // Where a request's outcome goes when there is no one to reap it
    // (futures): called on the executor's thread, once per request, with the
    // whole message; the request's place is free again when it returns.
    using Notify = void (*)(void *user_data, int64_t result, int err, const std::string &message);

    // A batch whose completions are reaped, or (notify) handed on.
    explicit Batch(unsigned depth, Notify notify = nullptr);
    // Cancels what has not started and waits for the rest.
    ~Batch();
    Batch(const Batch &) = delete;
    Batch &operator=(const Batch &) = delete;

    // Queues n requests, all or none (EAGAIN); returns n.
    unsigned submit(const phxfs_io *ios, unsigned n);
    // Takes between min_nr (unless timeout_ns passes) and max_nr completions.
    unsigned reap(phxfs_completion *out, unsigned min_nr, unsigned max_nr, int64_t timeout_ns);
    // Completes every request not yet started as canceled; returns how many.
    unsigned cancel();

  private:
    struct Slot {
        phxfs_io io{};
        FileHandle::Use handle;
        int64_t result = 0;
        uint32_t status = PHXFS_IO_DONE;
        char error[sizeof(phxfs_completion::error)] = {};
    };
    void check_owner() const;
    void executor();
    // Takes a group of pending requests into taken, runs it without the
    // lock (group: the caller's, reused) and completes it.
    void run_group_locked(std::unique_lock<std::mutex> &lock, std::vector<uint32_t> &taken,
                          std::vector<GroupRequest> &group);
    // Runs the requests of slots `taken` (group: the caller's, reused).
    void run(const std::vector<uint32_t> &taken, std::vector<GroupRequest> &group);
    // A slot's outcome from its request's.
    void finish(Slot &slot, const GroupRequest &g);
    // After its outcome: reaped later, or handed on now and the slot free.
    void complete_locked(uint32_t s);

    const pid_t owner_; // a child of fork() has no executor
    const Notify notify_;
    std::mutex m_;
    std::condition_variable work_cv_, done_cv_;
    std::vector<Slot> slots_;
    std::vector<uint32_t> free_;
    SlotRing pending_, done_;
    bool stopping_ = false;
    std::thread thread_;
};

} // namespace phxfs::core

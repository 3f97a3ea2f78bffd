#include "core/batch.hpp"

#include "core/config.hpp"
#include "core/device.hpp"
#include "core/error.hpp"
#include "core/request.hpp"
#include "engine/workers.hpp"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>

namespace phxfs::core {

Batch::Batch(unsigned depth, Notify notify)
    : owner_(::getpid()), notify_(notify), slots_(depth), pending_(depth), done_(depth) {
    if (depth == 0 || depth > kMaxDepth)
        fail(EINVAL,
             "batch depth " + std::to_string(depth) + " is not in 1.." + std::to_string(kMaxDepth));
    free_.reserve(depth);
    for (unsigned i = depth; i > 0; --i)
        free_.push_back(i - 1);
    thread_ = std::thread([this] { executor(); });
}

Batch::~Batch() {
    if (::getpid() != owner_) {
        thread_.detach(); // a child of fork(): the thread is the parent's
        return;
    }
    {
        std::lock_guard lock(m_);
        stopping_ = true;
    }
    cancel();
    work_cv_.notify_all();
    thread_.join();
}

void Batch::check_owner() const {
    if (::getpid() != owner_)
        fail(EBADF, "the batch was created before fork(): its requests run in the parent");
}

unsigned Batch::submit(const phxfs_io *ios, unsigned n) {
    check_owner();
    if (n == 0)
        return 0;
    if (!ios)
        fail(EINVAL, "ios is NULL");
    {
        std::lock_guard lock(m_);
        if (n > free_.size())
            fail(EAGAIN, std::to_string(n) + " requests, " + std::to_string(free_.size()) +
                             " free places in the batch (depth " + std::to_string(slots_.size()) +
                             "): reap completions first");
        for (unsigned i = 0; i < n; ++i) {
            const uint32_t s = free_.back();
            free_.pop_back();
            Slot &slot = slots_[s];
            slot.io = ios[i];
            slot.result = 0;
            slot.status = PHXFS_IO_DONE;
            slot.error[0] = '\0';
            pending_.push(s);
        }
    }
    work_cv_.notify_one();
    return n;
}

unsigned Batch::reap(phxfs_completion *out, unsigned min_nr, unsigned max_nr, int64_t timeout_ns) {
    check_owner();
    if (min_nr > max_nr || min_nr > slots_.size())
        fail(EINVAL, "min_nr " + std::to_string(min_nr) + " exceeds max_nr " +
                         std::to_string(max_nr) + " or the depth " + std::to_string(slots_.size()));
    if (max_nr > 0 && !out)
        fail(EINVAL, "out is NULL");
    std::unique_lock lock(m_);
    auto enough = [&] { return done_.size() >= min_nr; };
    // A reaper that would wait runs waiting requests itself, as the
    // executor would: no thread has to wake for a submit-then-reap.
    if (timeout_ns != 0) {
        thread_local std::vector<uint32_t> taken;
        thread_local std::vector<GroupRequest> group;
        while (!enough() && !pending_.empty())
            run_group_locked(lock, taken, group);
    }
    if (timeout_ns < 0)
        done_cv_.wait(lock, enough);
    else if (timeout_ns > 0)
        done_cv_.wait_for(lock, std::chrono::nanoseconds(timeout_ns), enough);
    unsigned got = 0;
    while (got < max_nr && !done_.empty()) {
        const uint32_t s = done_.pop();
        Slot &slot = slots_[s];
        phxfs_completion &c = out[got++];
        c.user_data = slot.io.user_data;
        c.result = slot.result;
        c.status = slot.status;
        c.reserved = 0;
        std::memcpy(c.error, slot.error, sizeof c.error);
        free_.push_back(s);
    }
    return got;
}

unsigned Batch::cancel() {
    unsigned n = 0;
    {
        std::lock_guard lock(m_);
        for (; !pending_.empty(); ++n) {
            const uint32_t s = pending_.pop();
            slots_[s].result = -ECANCELED;
            slots_[s].status = PHXFS_IO_CANCELED;
            if (notify_)
                notify_(slots_[s].io.user_data, -1, ECANCELED, "canceled before it started");
            complete_locked(s);
        }
    }
    if (n)
        done_cv_.notify_all();
    return n;
}

namespace {

// What a request asks for, checked; throws what makes it fail alone.
void check_request(const phxfs_io &io) {
    if (io.op != PHXFS_OP_READ && io.op != PHXFS_OP_WRITE)
        fail(EINVAL, "op " + std::to_string(io.op) + " is neither read nor write");
    if (io.reserved)
        fail(EINVAL, "reserved is not 0");
    check_io_range(io.buf_offset, io.nbyte, io.f_offset);
    if (io.buf && reinterpret_cast<uintptr_t>(io.buf) + io.buf_offset < io.buf_offset)
        fail(EINVAL, "buffer range overflows");
}

// The most requests the executor takes at once, and the most bytes (unless
// one request has more): enough that the lanes stay busy from one request
// to the next and their copies go to the device in large groups, few enough
// that what waits behind them stays cancelable (1 GiB: about 20 ms at the
// copy limit of a PCIe 5 GPU).
constexpr unsigned kMaxGroup = 4096;
constexpr uint64_t kMaxGroupBytes = 1ull << 30;

// The most runs of one group (requests of one device) that go at once.
constexpr size_t kMaxParallelRuns = 64;

} // namespace

// The executor wakes when requests are pending and runs them in groups of
// the oldest: the device runs a group's requests together, in pieces of a
// staging buffer, their file I/O on its threads and their copies in batched
// copies (core/request.cpp, run_group).
void Batch::executor() {
    // Kept for the next group, so that a warm executor allocates nothing.
    std::vector<uint32_t> taken;
    std::vector<GroupRequest> group;
    taken.reserve(kMaxGroup);
    group.reserve(kMaxGroup);
    std::unique_lock lock(m_);
    for (;;) {
        work_cv_.wait(lock, [this] { return stopping_ || !pending_.empty(); });
        if (pending_.empty())
            return; // stopping, nothing left
        run_group_locked(lock, taken, group);
    }
}

void Batch::run_group_locked(std::unique_lock<std::mutex> &lock, std::vector<uint32_t> &taken,
                             std::vector<GroupRequest> &group) {
    taken.clear();
    uint64_t bytes = 0;
    while (taken.size() < kMaxGroup && bytes < kMaxGroupBytes && !pending_.empty()) {
        bytes += std::min<uint64_t>(slots_[pending_.front()].io.nbyte, kMaxGroupBytes);
        taken.push_back(pending_.pop());
    }
    lock.unlock();
    try {
        run(taken, group);
    } catch (...) { // out of memory before the devices ran any: each fails with it
        GroupRequest failed;
        failed.error = std::current_exception();
        for (uint32_t s : taken)
            finish(slots_[s], failed);
        group.clear();
    }
    lock.lock();
    for (uint32_t s : taken) {
        slots_[s].handle = FileHandle::Use(); // closing the handle waits no more for it
        complete_locked(s);
    }
    done_cv_.notify_all();
}

void Batch::run(const std::vector<uint32_t> &taken, std::vector<GroupRequest> &group) {
    group.clear();
    // Requests on the handle of the one before take theirs from it: a
    // batch's requests are mostly on one file.
    const FileHandle::Use *prev = nullptr;
    phxfs_file_t prev_fh = nullptr;
    for (uint32_t s : taken) {
        Slot &slot = slots_[s];
        GroupRequest &g = group.emplace_back();
        try {
            check_request(slot.io);
            slot.handle = prev && slot.io.fh == prev_fh
                              ? prev->another()
                              : handles().use(reinterpret_cast<uintptr_t>(slot.io.fh));
            prev = &slot.handle;
            prev_fh = slot.io.fh;
            g.write = slot.io.op == PHXFS_OP_WRITE;
            g.file = &slot.handle->file();
            g.base = static_cast<char *>(slot.io.buf);
            g.buf = g.base + slot.io.buf_offset;
            g.n = slot.io.nbyte;
            g.off = slot.io.f_offset;
        } catch (...) {
            g.error = std::current_exception();
        }
    }
    // Runs of requests on one device go to it together; where the group
    // spans several devices, their runs go at the same time (the caller's
    // thread and the process-wide pool's), so that no device's requests
    // wait for another device's I/O.
    auto device_of = [&](size_t i) { return slots_[taken[i]].handle->device_id(); };
    auto run_end = [&](size_t a) {
        size_t b = a + 1;
        while (b < group.size() && !group[b].error && device_of(b) == device_of(a))
            ++b;
        return b;
    };
    // A run that throws (out of memory) fails its undecided requests.
    auto run_on_device = [&](size_t a, size_t b) {
        try {
            device(device_of(a)).io_group(&group[a], b - a);
        } catch (...) {
            for (size_t i = a; i < b; ++i)
                if (!group[i].done && !group[i].error)
                    group[i].error = std::current_exception();
        }
    };
    int one = -1;
    bool several = false;
    for (size_t i = 0; i < group.size() && !several; ++i) {
        if (group[i].error)
            continue;
        several = one >= 0 && device_of(i) != one;
        one = device_of(i);
    }
    if (!several) {
        for (size_t a = 0; a < group.size();) {
            if (group[a].error) {
                ++a;
                continue;
            }
            const size_t b = run_end(a);
            run_on_device(a, b);
            a = b;
        }
    } else {
        std::vector<std::pair<size_t, size_t>> runs;
        for (size_t a = 0; a < group.size();) {
            const size_t b = group[a].error ? a + 1 : run_end(a);
            if (!group[a].error)
                runs.emplace_back(a, b);
            a = b;
        }
        std::atomic<size_t> next{0};
        run_parallel(static_cast<unsigned>(std::min<size_t>(runs.size(), kMaxParallelRuns)), [&] {
            for (size_t k; (k = next.fetch_add(1)) < runs.size();)
                run_on_device(runs[k].first, runs[k].second);
        });
    }
    for (size_t i = 0; i < taken.size(); ++i)
        finish(slots_[taken[i]], group[i]);
    group.clear(); // no registration stays in use
}

void Batch::finish(Slot &slot, const GroupRequest &g) {
    if (!g.error) {
        slot.result = static_cast<int64_t>(g.got);
        slot.status = PHXFS_IO_DONE;
        if (notify_)
            notify_(slot.io.user_data, slot.result, 0, {});
        return;
    }
    try {
        std::rethrow_exception(g.error);
    } catch (...) {
        const Failure f = current_failure();
        slot.result = -f.err;
        slot.status = PHXFS_IO_FAILED;
        std::snprintf(slot.error, sizeof slot.error, "%s", f.message.c_str());
        if (notify_)
            notify_(slot.io.user_data, -1, f.err, f.message);
    }
}

void Batch::complete_locked(uint32_t s) {
    if (notify_)
        free_.push_back(s);
    else
        done_.push(s);
}

} // namespace phxfs::core

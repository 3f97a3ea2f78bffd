#include "engine/workers.hpp"

#include "core/config.hpp"
#include "core/spin.hpp"

#include <sched.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>

namespace phxfs::core {

namespace {

// One request's shared state: pool workers may pick it up after the caller
// has finished the work, so it lives as long as any reference to it.
struct Task {
    std::function<void()> body;
    std::mutex m;
    std::condition_variable cv;
    std::atomic<unsigned> running{0}; // changed under m; read without it by a spinning caller
    bool closed = false;              // the caller returned: late runs are skipped
};

void run_task(Task &t) {
    {
        std::lock_guard lock(t.m);
        if (t.closed)
            return;
        ++t.running;
    }
    t.body();
    {
        std::lock_guard lock(t.m);
        --t.running;
    }
    t.cv.notify_all();
}

// Workers of every pool spinning now: Spin::max_spinners bounds it, so that
// spinners never take the cores the working threads need.
std::atomic<unsigned> spinners_now{0};

} // namespace

WorkerPool::Spin WorkerPool::Spin::configured() {
    Spin s;
    s.us = config().worker_spin_us;
    // The cores this process may run on (a container's cpuset), not the
    // machine's.
    cpu_set_t set;
    CPU_ZERO(&set);
    const unsigned cores = sched_getaffinity(0, sizeof set, &set) == 0
                               ? static_cast<unsigned>(CPU_COUNT(&set))
                               : std::thread::hardware_concurrency();
    s.max_spinners = cores > 3 ? cores / 2 - 1 : 0;
    return s;
}

// A pool's queue and workers. Workers hold it by shared_ptr, so a pool may
// go (a device's, in tests) while they finish; they leave once it is gone
// and the queue is empty.
struct WorkerPool::State {
    explicit State(Spin s) : spin(s) {}

    const Spin spin;
    std::mutex m;
    std::condition_variable cv;
    std::deque<std::shared_ptr<Task>> queue;
    std::atomic<unsigned> queued{0};   // queue.size(), for spinners to watch without m
    std::atomic<unsigned> spinning{0}; // this pool's workers spinning now
    unsigned sleeping = 0;             // this pool's workers waiting on cv (under m)
    unsigned threads = 0;              // detached
    bool stopping = false;

    // After a body (or at start): watch the queue for spin.us, if fewer
    // than max_spinners workers of the process spin already.
    void spin_for_work() {
        if (spin.us == 0 || queued.load(std::memory_order_relaxed))
            return;
        if (spinners_now.fetch_add(1) >= spin.max_spinners) {
            spinners_now.fetch_sub(1);
            return;
        }
        spinning.fetch_add(1);
        const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(spin.us);
        for (unsigned i = 1; queued.load(std::memory_order_acquire) == 0; ++i) {
            cpu_relax();
            if (i % 64 == 0 && std::chrono::steady_clock::now() >= until)
                break;
        }
        // Before this thread takes m: run() then either counted it and
        // finds the body taken by it under m, or wakes a sleeper.
        spinning.fetch_sub(1);
        spinners_now.fetch_sub(1);
    }

    static void loop(const std::shared_ptr<State> &self) {
        State &s = *self;
        for (;;) {
            s.spin_for_work();
            std::shared_ptr<Task> task;
            {
                std::unique_lock lock(s.m);
                ++s.sleeping;
                s.cv.wait(lock, [&] { return s.stopping || !s.queue.empty(); });
                --s.sleeping;
                if (s.queue.empty())
                    return; // stopping
                task = std::move(s.queue.front());
                s.queue.pop_front();
                s.queued.fetch_sub(1, std::memory_order_relaxed);
            }
            run_task(*task);
        }
    }
};

WorkerPool::WorkerPool(Spin spin) : state_(std::make_shared<State>(spin)) {}

WorkerPool::~WorkerPool() {
    {
        std::lock_guard lock(state_->m);
        state_->stopping = true;
    }
    state_->cv.notify_all();
}

unsigned WorkerPool::threads() const {
    std::lock_guard lock(state_->m);
    return state_->threads;
}

unsigned WorkerPool::queued() const {
    std::lock_guard lock(state_->m);
    return static_cast<unsigned>(state_->queue.size());
}

void WorkerPool::run(unsigned width, const std::function<void()> &body) {
    if (width <= 1) {
        body();
        return;
    }
    auto task = std::make_shared<Task>();
    task->body = body;
    const unsigned copies = width - 1;
    State &s = *state_;
    bool wake = false;
    {
        std::lock_guard lock(s.m);
        // Enough workers for the widest request seen; they idle on the queue.
        for (; s.threads < std::min(copies, 256u); ++s.threads)
            std::thread([st = state_] { State::loop(st); }).detach();
        for (unsigned i = 0; i < copies; ++i)
            s.queue.push_back(task);
        s.queued.fetch_add(copies, std::memory_order_release);
        // Spinners take bodies without a wake-up (one that stops spinning
        // now finds the queue under m before it sleeps); sleepers are woken
        // when the queue, older bodies included, needs more than them.
        wake = s.sleeping && s.queue.size() > s.spinning.load();
    }
    if (wake)
        s.cv.notify_all();
    // However the caller's share ends (an exception included), no pool
    // worker may run the body afterwards: it refers to the caller's frame.
    // Workers still in it finish within microseconds as a rule (the body
    // returns once its work is taken): the caller spins for them as idle
    // workers do, rather than sleep and pay for a wake-up.
    struct Join {
        Task &t;
        const Spin &spin;
        ~Join() {
            {
                std::lock_guard lock(t.m);
                t.closed = true;
            }
            if (spin.us && spin.max_spinners) {
                const auto until =
                    std::chrono::steady_clock::now() + std::chrono::microseconds(spin.us);
                for (unsigned i = 1; t.running.load(std::memory_order_acquire) != 0; ++i) {
                    cpu_relax();
                    if (i % 64 == 0 && std::chrono::steady_clock::now() >= until)
                        break;
                }
            }
            std::unique_lock lock(t.m);
            t.cv.wait(lock, [this] { return t.running == 0; });
        }
    } join{*task, s.spin};
    body();
}

namespace {

// The process-wide pool. A child of fork() has none of the parent's
// threads, and the parent's pool may be mid-change (its lock held by a
// thread that does not exist in the child), so the child starts a new pool
// and never touches the old one.
std::atomic<WorkerPool *> the_pool{nullptr};

} // namespace

WorkerPool &shared_workers() {
    static std::once_flag once;
    std::call_once(once, [] { the_pool = new WorkerPool; });
    return *the_pool.load();
}

void run_parallel(unsigned width, const std::function<void()> &body) {
    shared_workers().run(width, body);
}

void workers_after_fork_child() {
    spinners_now = 0; // the parent's spinners are not in this process
    if (the_pool.load())
        the_pool = new WorkerPool; // the old one is left as it is: its threads are gone
}

} // namespace phxfs::core

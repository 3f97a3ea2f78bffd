#include "engine/workers.hpp"

#include <algorithm>
#include <atomic>
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
    unsigned running = 0;
    bool closed = false; // the caller returned: late runs are skipped
};

class Pool {
  public:
    // Queues `copies` runs of task, with at least `threads` workers.
    void post(const std::shared_ptr<Task> &task, unsigned copies, unsigned threads) {
        {
            std::lock_guard lock(m_);
            // Enough workers for the widest request seen; they idle on the queue.
            for (; threads_ < std::min(threads, 256u); ++threads_)
                std::thread([this] { loop(); }).detach();
            for (unsigned i = 0; i < copies; ++i)
                queue_.push_back(task);
        }
        cv_.notify_all();
    }

  private:
    void loop() {
        for (;;) {
            std::shared_ptr<Task> task;
            {
                std::unique_lock lock(m_);
                cv_.wait(lock, [this] { return !queue_.empty(); });
                task = std::move(queue_.front());
                queue_.pop_front();
            }
            run(*task);
        }
    }

    static void run(Task &t) {
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

    std::mutex m_;
    std::condition_variable cv_;
    std::deque<std::shared_ptr<Task>> queue_;
    unsigned threads_ = 0; // detached: they live as long as the process
};

// The pool of this process. A child of fork() has none of the parent's
// threads, and the parent's pool may be mid-change (its lock held by a
// thread that does not exist in the child), so the child starts a new pool
// and never touches the old one.
std::atomic<Pool *> the_pool{nullptr};

Pool &pool() {
    static std::once_flag once;
    std::call_once(once, [] { the_pool = new Pool; });
    return *the_pool.load();
}

} // namespace

void run_parallel(unsigned width, const std::function<void()> &body) {
    if (width <= 1) {
        body();
        return;
    }
    auto task = std::make_shared<Task>();
    task->body = body;
    pool().post(task, width - 1, width - 1);
    // However the caller's share ends (an exception included), no pool
    // worker may run the body afterwards: it refers to the caller's frame.
    struct Join {
        Task &t;
        ~Join() {
            std::unique_lock lock(t.m);
            t.closed = true;
            t.cv.wait(lock, [this] { return t.running == 0; });
        }
    } join{*task};
    body();
}

void workers_after_fork_child() {
    if (the_pool.load())
        the_pool = new Pool; // the old one is left as it is: its threads are gone
}

} // namespace phxfs::core

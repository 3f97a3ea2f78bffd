// Pools of worker threads that join callers' requests. Each device has a
// pool of its own (Session::workers), so that one device's long request
// never takes the threads another device's request waits for; a
// process-wide pool serves what belongs to no one device (a batch's runs on
// several devices).
#pragma once

#include <functional>
#include <memory>

namespace phxfs::core {

class WorkerPool {
  public:
    // How idle workers wait for the next body: spinning for `us`
    // microseconds after their last one (at most `max_spinners` of the
    // process's workers at a time), then asleep. Waking a sleeping thread
    // costs tens of microseconds on a VM, as much as a batch of 4 KiB reads
    // from the page cache; a worker that spins joins the next one at once.
    struct Spin {
        unsigned us = 0;
        unsigned max_spinners = 0;
        // The configuration's (PHXFS_WORKER_SPIN_US, default 50; 0: never
        // spin), with up to half the process's cores less one spinning (none
        // with 3 cores or fewer).
        static Spin configured();
    };

    explicit WorkerPool(Spin spin = Spin::configured());
    // Idle workers leave; a worker running a body finishes it first (no
    // run() can be in progress: its caller holds the pool).
    ~WorkerPool();
    WorkerPool(const WorkerPool &) = delete;
    WorkerPool &operator=(const WorkerPool &) = delete;

    // Runs body on up to `width` threads at once: the calling thread and up
    // to width - 1 of this pool's workers, and returns when every run of
    // body has returned. body must be safe to run concurrently and return
    // quickly when there is no work left (runs may start late, after the
    // work is done). Exceptions thrown by body are the caller's to catch
    // inside body. The pool starts workers as it needs them, up to the
    // widest request seen.
    void run(unsigned width, const std::function<void()> &body);

    // Workers started so far (tests).
    unsigned threads() const;
    // Bodies queued and not yet taken by a worker (tests).
    unsigned queued() const;

  private:
    struct State;
    std::shared_ptr<State> state_; // shared with the workers, which may outlive the pool
};

// The process-wide pool: run_parallel(w, body) is shared_workers().run(w, body).
WorkerPool &shared_workers();
void run_parallel(unsigned width, const std::function<void()> &body);

// In a child of fork(): a new, empty process-wide pool (see fork.cpp).
// Devices get new pools with their new Device objects.
void workers_after_fork_child();

} // namespace phxfs::core

// Stream-ordered I/O: a read or write that a GPU stream runs in its order,
// after the work queued on the stream before it and before the work queued
// after it, without blocking the thread that queues it.
//
// How. Each request has two words of memory that both the host and the GPU
// see. Queuing it puts two stream memory operations on the caller's stream:
// "write gen to reached", then "wait until done == gen". The poller thread
// watches the reached words of queued requests; when the stream gets there
// it reads the request's size and offsets (passed by pointer: their values
// at that moment count), runs the request as a request of its own batch
// (with the grouped path of small requests), writes the result through the
// caller's pointer and gen to done, and the stream goes on. No host
// callback, no thread blocked per request.
//
// Lifetimes. A queued request holds its place (an Op) from queueing until
// done is written; the caller's pointers must stay valid that long (as
// cuFile's stream calls require). A request whose stream never gets there
// (its context destroyed) keeps its place for the life of the process.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace phxfs::core {

class Batch;

// What the library needs of a device's streams (memory/: CUDA's stream
// memory operations; tests: a stand-in where no GPU can exist).
class StreamOrder {
  public:
    virtual ~StreamOrder() = default;
    // n zeroed words that the host and the streams' device both read and
    // write, for the life of this object.
    virtual uint32_t *alloc_words(size_t n) = 0;
    // Queues on stream: store v to *word when the stream gets here (after
    // the work before it has completed and its writes are visible).
    virtual void signal(void *stream, uint32_t *word, uint32_t v) = 0;
    // Queues on stream: go on only once *word has reached v, counting as a
    // wrapping counter does: (int32_t)(*word - v) >= 0. (Not ==: a done word
    // may have moved on to its next use before the stream looked at it.)
    virtual void wait(void *stream, uint32_t *word, uint32_t v) = 0;
};

// The parameters of one stream-ordered request: the caller's pointers.
struct StreamRequest {
    uintptr_t handle = 0; // a HandleTable key
    bool write = false;
    void *buf = nullptr;
    const size_t *size_p = nullptr;
    const off_t *f_offset_p = nullptr;
    const off_t *buf_offset_p = nullptr;
    ssize_t *result_p = nullptr; // the bytes moved, or -errno
};

class StreamIo {
  public:
    static constexpr unsigned kMaxInFlight = 4096;

    explicit StreamIo(std::unique_ptr<StreamOrder> order, unsigned capacity = kMaxInFlight);
    // Waits for the poller; requests still queued must have completed.
    ~StreamIo();
    StreamIo(const StreamIo &) = delete;
    StreamIo &operator=(const StreamIo &) = delete;

    // Queues req on stream. Throws EBADF for a handle not open, EINVAL for
    // a NULL pointer, EAGAIN when capacity requests are queued, or what the
    // stream order throws (the stream is then left unchanged).
    void enqueue(const StreamRequest &req, void *stream);

  private:
    struct Op {
        StreamIo *owner = nullptr;
        uint32_t index = 0;
        uint32_t gen = 0;    // this use's value of the reached and done words (grows)
        bool orphan = false; // the stream does not wait for it: never run it
        StreamRequest req;
    };
    // The batch's notify: the result to the caller, done to the stream.
    static void complete(void *user_data, int64_t result, int err, const std::string &message);
    void poller();
    // Starts the requests whose streams got to them; returns how many.
    size_t start_reached(std::vector<uint32_t> &watch);
    uint32_t *reached(uint32_t i) const { return words_ + 2 * i; }
    uint32_t *done(uint32_t i) const { return words_ + 2 * i + 1; }

    const std::unique_ptr<StreamOrder> order_;
    uint32_t *words_ = nullptr; // reached, done of each Op
    std::vector<Op> ops_;
    std::unique_ptr<Batch> batch_; // runs what the poller starts

    std::mutex m_;
    std::condition_variable cv_;
    std::vector<uint32_t> free_;          // Op indexes
    std::vector<uint32_t> queued_;        // queued, not yet reached (new since the poller looked)
    std::atomic<bool> has_queued_{false}; // queued_ is not empty: the poller need not lock
    bool stopping_ = false;
    std::thread poller_;
};

// The process's stream I/O over CUDA's stream memory operations; throws
// ENOTSUP where they cannot run (no driver, or it lacks them).
StreamIo &cuda_stream_io();
// In a child of fork(): the parent's poller is not here (nor its CUDA).
void stream_io_after_fork_child();

} // namespace phxfs::core

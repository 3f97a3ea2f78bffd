// Stream-ordered I/O (phxfs_file_read_stream/write_stream): a read or write
// that a GPU stream runs in its order, after the work queued on it before
// and before the work queued after, without blocking the caller.
//
// The rule this design keeps (an earlier version broke it and deadlocked on
// an H200, see commit c83fc5b): while a stream request is pending, the
// library does NO GPU work of its own. Everything that touches CUDA happens
// at enqueue on the calling thread, before the request's first wait is
// queued (StreamOrder::prepare: the copy kernel loaded into the stream's
// context; the shared memory allocated once, on the first request of the
// process or in phxfs_stream_register). The device half of a request runs on
// the caller's own stream; the host half runs on this file's service
// threads, which never call CUDA and never wait for any caller's thread.
//
// A request and its rounds. At enqueue, *size_p is the request's most bytes
// (cuFile's rule for a size not known yet); the request reserves one piece
// of staging, min(that, round_bytes) (+16 for alignment, whole pages), and
// one record (its words and copy descriptor, shared with the GPU), and
// queues rounds = ceil(most / round_bytes) (at least 1) rounds on the
// stream, round k with generation g+k:
//   read:  write reached=g+k; wait ready>=g+k; [copy in]; copy kernel
//          ... after the last round: write released=g_last
//   write: write reached=g+k; wait ready>=g+k; copy kernel; [copy out];
//          write copied=g+k; wait done>=g+k
// The service thread of the record, when it sees reached (round 0: it reads
// *size_p, *f_offset_p and *buf_offset_p now, their values at execution
// time) preads the round's piece into the staging (a read) and fills the
// descriptor {dst, src, bytes, gen}, stores *bytes_p at the last round, then
// ready. For a write it fills the descriptor at reached, pwrites the staging
// at copied, stores *bytes_p at the last round, then done. The kernel copies
// descriptor.bytes (the execution-time size; 0 past the end or after an
// error) between the caller's buffer and the staging. Rounds of up to 16 KiB
// use the staging itself, mapped pinned host memory the GPU reads and writes
// across the bus. Larger ones use its mirror in the GPU's memory (the
// context's bounce memory, StreamOrder::bounce, the staging's size, made at
// the context's first request of over 16 KiB or at register_stream and kept
// for the life of the process: 64 MiB of GPU memory a context by default,
// PHXFS_STREAM_STAGING; where it cannot be made, the context's rounds all
// use the staging across the bus): [copy in] copies the request's piece of
// staging there in one copy-engine transfer before the kernel, [copy out]
// back after it. Rounds of one request reuse its one piece of staging:
// round k+1 is reached only after round k's kernel and copies have finished
// (stream order).
//
// Why this cannot deadlock. (1) Every wait a request queues on stream S is
// satisfied by a service thread, once S has written the reached (or copied)
// word queued before that wait on S: the stream itself has already got
// there, so the wait depends on nothing queued after it nor on any other
// stream. (2) A service thread needs nothing from the GPU (no CUDA call, no
// stream, no event: only loads and stores of shared memory and pread/pwrite
// through the library's plain file path, engine/fileio) and nothing from a
// caller's thread (it takes no lock that a thread holds across a CUDA call
// or across a wait for the GPU; a handle's close waits at most for one
// pread/pwrite, the request holding the handle only while its file I/O
// runs). So each wait is released after finite host work, whatever else
// the GPU is doing, whichever hardware queues streams share. (3) Enqueue
// never blocks on staging or records that are in use: it fails with EAGAIN.
// Whether the work that would release them (queued ahead on some stream) can
// run without help from the blocked thread depends on what the caller queued
// before (a host function, a wait on a word the caller writes later, a
// kernel spinning on host memory), which the library cannot see; a caller
// that knows synchronises a stream and tries again. (4) Enqueue calls CUDA
// only to queue work (and, the first time it meets a context, to load the
// kernel and allocate the bounce memory) and holds none of the service
// threads' locks while it does: so even a CUDA call that waits for the GPU
// (a module load or an allocation that synchronises the context, a full
// push buffer) waits only for pending requests that the service threads
// complete without it. The same holds for every other CUDA
// call of the process (the synchronous API's copies on the library's own
// streams, a lazily loaded kernel of the caller's): what they wait for
// completes. What can still hold a request is the caller's own work ahead
// of it on the stream, as for any work queued there.
//
// Lifetimes. From enqueue until its stream has passed it (released, or the
// last done), a request owns its record and staging; the service thread
// frees them. The caller's pointers (size, offsets, result, buffer) must
// stay valid until the stream has passed the request. Enqueue that fails
// part way through queuing (a CUDA error after the first op) leaves the
// queued part harmless (every wait it queued is released at once, the
// kernel copies nothing) and leaks that record and staging for the life of
// the process. A request whose stream never gets there (context destroyed)
// keeps them too.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace phxfs::core {

// One request's words and copy descriptor in memory that the host and the
// GPU both read and write (pinned, mapped); one 64-byte line each. The copy
// kernel (memory/stream_copy.cu) reads the descriptor: it copies `bytes`
// from src to dst when desc_gen is its round's generation, else nothing.
struct StreamRecord {
    uint32_t reached;         // stream -> host: the stream got to the round
    uint32_t ready;           // host -> stream: the descriptor is filled (a read: staging too)
    uint32_t copied;          // stream -> host (writes): the kernel filled the staging
    uint32_t done;            // host -> stream (writes): the file is written
    uint32_t released;        // stream -> host (reads): the last kernel is done with the staging
    uint32_t desc_gen;        // the generation the descriptor below is for
    uint64_t dst, src, bytes; // device addresses
    uint64_t pad[2];
};
static_assert(sizeof(StreamRecord) == 64);

// What the library needs of a device's streams: CUDA's (memory/
// cuda_stream_order.cpp) or, in tests, a stand-in that plays a stream's ops
// in order on a thread. Only enqueue calls these, on the caller's thread.
class StreamOrder {
  public:
    virtual ~StreamOrder() = default;
    // bytes of zeroed, page-aligned memory that the host and every stream's
    // GPU read and write, for the life of this object. Called once.
    virtual void *alloc_shared(size_t bytes) = 0;
    // The address the GPU uses for p, which is in alloc_shared memory.
    virtual uint64_t device_address(const void *p) const = 0;
    // Everything GPU-side a request on stream needs besides queuing: checks
    // the stream (EINVAL), loads the copy kernel into its context. Called
    // before any op of a request is queued; cheap after the first time.
    virtual void prepare(void *stream) = 0;
    // Queue on stream: store v to *word once the work before is complete
    // and its writes visible (a release).
    virtual void write(void *stream, uint32_t *word, uint32_t v) = 0;
    // Queue on stream: go on once (int32_t)(*word - v) >= 0.
    virtual void wait(void *stream, uint32_t *word, uint32_t v) = 0;
    // Queue on stream: the copy rec's descriptor says, if its desc_gen is
    // gen; max_bytes bounds it (sizes the launch).
    virtual void copy(void *stream, StreamRecord *rec, uint32_t gen, size_t max_bytes) = 0;
    // The device address of `bytes` of memory of stream's GPU that mirrors
    // the staging (the same offsets), made the first time stream's context
    // asks and the same ever after; 0 where there is none. Called after
    // prepare(stream), before anything is queued.
    virtual uint64_t bounce(void *stream, size_t bytes) = 0;
    // Queue on stream: copy n bytes from shared memory src to device
    // address dst (bounce memory), or back.
    virtual void to_device(void *stream, uint64_t dst, const void *src, size_t n) = 0;
    virtual void to_host(void *stream, void *dst, uint64_t src, size_t n) = 0;
};

// The caller's request: the handle, the buffer and its pointers.
struct StreamRequest {
    uintptr_t handle = 0; // a HandleTable key
    bool write = false;
    char *buf = nullptr;
    const size_t *size_p = nullptr;      // at enqueue: the most; at execution: the size
    const off_t *f_offset_p = nullptr;   // read at execution
    const off_t *buf_offset_p = nullptr; // read at execution; NULL: 0
    ssize_t *result_p = nullptr;         // bytes moved, or -errno; before the stream goes on
};

class StreamIo {
  public:
    struct Options {
        unsigned records = 4096;                 // requests pending at most
        size_t staging_bytes = size_t{64} << 20; // shared staging, all requests together
        size_t round_bytes = size_t{4} << 20;    // staging per request at most (a round)
        unsigned threads = 4;                    // service threads
        // A service thread spins this long after its last progress, then
        // naps (a stream that has just passed one request usually reaches
        // the next within microseconds).
        std::chrono::microseconds spin{50};
    };

    // Allocates the shared memory (order->alloc_shared) and starts the
    // service threads. Throws what alloc_shared throws.
    StreamIo(std::unique_ptr<StreamOrder> order, const Options &opt);
    // Waits until every pending request has been passed by its stream, then
    // stops the threads (the process's instance is never destroyed).
    ~StreamIo();
    StreamIo(const StreamIo &) = delete;
    StreamIo &operator=(const StreamIo &) = delete;

    // Prepares stream (StreamOrder::prepare) and its context's bounce memory.
    void register_stream(void *stream);
    // Queues req on stream. Throws EINVAL (NULL pointer, a most beyond
    // off_t), EBADF (handle not open, or not open for the operation), EAGAIN
    // (no free record or staging), or what the stream order throws; the
    // stream is unchanged then, unless queuing failed part way (see top).
    void enqueue(const StreamRequest &req, void *stream);

    // For tests: staging and records not in use.
    size_t free_staging_bytes();
    unsigned free_records();

  private:
    struct Pending;
    struct Service;
    void serve(Service &sv);
    bool step_queue(std::deque<std::unique_ptr<Pending>> &q, bool heads_only);
    // One step of p; true when it made progress, and sets finished when p
    // is gone (its record and staging are freed).
    bool step(Pending &p, bool &finished);
    void begin(Pending &p);  // round 0: the execution-time values
    void report(Pending &p); // the last round: the result, the device's counters
    void fill_read(Pending &p, uint32_t gen);
    void fill_write(Pending &p, uint32_t gen);
    void finish_round(Pending &p);
    uint64_t staging_address(const Pending &p, const char *host) const;
    size_t staging_size() const;
    void release(Pending &p);

    // Staging: first fit over pages of the pool.
    bool reserve(size_t bytes, size_t &off);
    void unreserve(size_t off, size_t bytes);

    const std::unique_ptr<StreamOrder> order_;
    const Options opt_;
    StreamRecord *records_ = nullptr;
    char *staging_ = nullptr;
    std::vector<uint32_t> gens_; // each record's last generation (enqueue's, under m_)

    std::mutex m_; // free_records_, free_extents_, gens_: never held across a CUDA call
    std::vector<uint32_t> free_records_;
    std::map<size_t, size_t> free_extents_; // offset -> bytes

    std::vector<std::unique_ptr<Service>> services_;
};

// CUDA's streams (memory/cuda_stream_order.cpp; memory_nocuda.cpp where
// CUDA headers are absent); throws ENOTSUP where they cannot serve.
std::unique_ptr<StreamOrder> make_cuda_stream_order();

// The process's stream I/O over CUDA; created on first use, never
// destroyed. Throws ENOTSUP where it cannot run (no CUDA driver, a driver
// without stream memory operations, a library built without nvcc), EINVAL
// for a bad PHXFS_STREAM_STAGING.
StreamIo &cuda_stream_io();
// In a child of fork(): the parent's service threads are not here.
void stream_io_after_fork_child();

} // namespace phxfs::core

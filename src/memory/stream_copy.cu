// The device half of a stream-ordered request's round (core/stream_io.hpp):
// one launch on the caller's stream, queued at enqueue, that copies what
// the round's descriptor says once the host has filled it. The descriptor
// and the staging are pinned host memory, which the GPU reads and writes
// directly; the buffer is the caller's. Built into the library as a fatbin
// (src/CMakeLists.txt), loaded with cuModuleLoadData (cuda_stream_order.cpp).

// core/stream_io.hpp's StreamRecord.
struct PhxfsStreamRecord {
    unsigned reached, ready, copied, done, released, desc_gen;
    unsigned long long dst, src, bytes;
    unsigned long long pad[2];
};

// Loads through .cv: a line of system memory cached by an earlier round
// (the same staging, rewritten by the host since) is fetched again.
template <typename T> __device__ __forceinline__ T load_fresh(const T *p) {
    return __ldcv(p);
}

// Copies bytes from src to dst when the descriptor is this round's (gen);
// else (a request whose queuing failed part way) nothing. Grid-stride, so
// any launch size copies any size; the host places the staging at the
// buffer's offset within 16 bytes, so all but at most 15 bytes at each end
// move as 16-byte words.
extern "C" __global__ void phxfs_stream_copy(const PhxfsStreamRecord *rec, unsigned gen) {
    // One thread of each block reads the descriptor, which is in host
    // memory: every load of it is a read across the bus, and one per thread
    // (4 x 256 a block) held 1 MiB requests to 0.6 GB/s on an H100.
    __shared__ unsigned long long desc[3];
    __shared__ unsigned ok;
    if (threadIdx.x == 0) {
        unsigned g;
        // Acquire at system scope: the host's stores of the descriptor and
        // the staging before its release of desc_gen are visible to what
        // follows.
        asm volatile("ld.acquire.sys.u32 %0, [%1];" : "=r"(g) : "l"(&rec->desc_gen) : "memory");
        ok = g == gen;
        if (ok) {
            desc[0] = load_fresh(&rec->dst);
            desc[1] = load_fresh(&rec->src);
            desc[2] = load_fresh(&rec->bytes);
        }
    }
    __syncthreads(); // orders the other threads' loads after thread 0's acquire, block-wide
    if (!ok)
        return;
    const unsigned long long dst = desc[0];
    const unsigned long long src = desc[1];
    const unsigned long long n = desc[2];
    char *d = reinterpret_cast<char *>(dst);
    const char *s = reinterpret_cast<const char *>(src);
    const unsigned long long tid =
        blockIdx.x * static_cast<unsigned long long>(blockDim.x) + threadIdx.x;
    const unsigned long long stride = static_cast<unsigned long long>(gridDim.x) * blockDim.x;
    unsigned long long head = n, body = 0;
    if (((dst ^ src) & 15) == 0) {
        head = (16 - (dst & 15)) & 15;
        if (head > n)
            head = n;
        body = (n - head) / 16;
    }
    for (unsigned long long i = tid; i < head; i += stride)
        d[i] = load_fresh(s + i);
    uint4 *d16 = reinterpret_cast<uint4 *>(d + head);
    const uint4 *s16 = reinterpret_cast<const uint4 *>(s + head);
    for (unsigned long long i = tid; i < body; i += stride)
        d16[i] = load_fresh(s16 + i);
    for (unsigned long long i = head + body * 16 + tid; i < n; i += stride)
        d[i] = load_fresh(s + i);
    // The stream's next op (cuStreamWriteValue32, with its memory barrier)
    // publishes these writes; this fence makes them visible to the host
    // regardless.
    __threadfence_system();
}

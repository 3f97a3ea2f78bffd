// The copies of a group of requests as one kernel (memory_cuda.cpp): each
// block copies 64 KiB tiles of pieces between device memory and device or
// pinned host memory, which the GPU reaches directly (unified addressing). One launch
// replaces a copy per piece, each of which costs the driver about 3 us.
// Built into the library as a fatbin (src/CMakeLists.txt), loaded with
// cuModuleLoadData.

struct PhxfsCopy {
    unsigned long long dst, src, n;
};

// Bytes one block copies of a piece at a time: pieces of any size spread
// over many blocks (one block alone moves a few GB/s at most).
constexpr unsigned long long kTile = 64 << 10;

// Copies n bytes within one tile, every thread of the block taking part:
// 16-byte words four at a time where both ends allow, bytes otherwise.
__device__ __forceinline__ void copy_tile(char *d, const char *s, unsigned long long n) {
    unsigned long long head = 0;
    if (((reinterpret_cast<unsigned long long>(d) | reinterpret_cast<unsigned long long>(s)) &
         15) == 0) {
        const unsigned long long n16 = n / 16;
        uint4 *d16 = reinterpret_cast<uint4 *>(d);
        const uint4 *s16 = reinterpret_cast<const uint4 *>(s);
        const unsigned long long step = blockDim.x;
        unsigned long long i = threadIdx.x;
        for (; i + 3 * step < n16; i += 4 * step) {
            const uint4 a = s16[i], b = s16[i + step], c = s16[i + 2 * step],
                        e = s16[i + 3 * step];
            d16[i] = a;
            d16[i + step] = b;
            d16[i + 2 * step] = c;
            d16[i + 3 * step] = e;
        }
        for (; i < n16; i += step)
            d16[i] = s16[i];
        head = n16 * 16;
    }
    for (unsigned long long i = head + threadIdx.x; i < n; i += blockDim.x)
        d[i] = s[i];
}

// Grid: y over the pieces, x over each piece's tiles (both grid-stride, so
// any launch size copies everything).
extern "C" __global__ void phxfs_scatter(const PhxfsCopy *copies, unsigned count) {
    for (unsigned c = blockIdx.y; c < count; c += gridDim.y) {
        const PhxfsCopy cp = copies[c];
        for (unsigned long long t = blockIdx.x * kTile; t < cp.n; t += gridDim.x * kTile) {
            const unsigned long long len = cp.n - t < kTile ? cp.n - t : kTile;
            copy_tile(reinterpret_cast<char *>(cp.dst) + t,
                      reinterpret_cast<const char *>(cp.src) + t, len);
        }
    }
}

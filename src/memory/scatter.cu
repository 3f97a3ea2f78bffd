// The copies of a group of small requests as one kernel (memory_cuda.cpp):
// each block copies whole pieces between device memory and pinned host
// memory, which the GPU reaches directly (unified addressing). One launch
// replaces a copy per piece, each of which costs the driver about 3 us.
// Built into the library as a fatbin (src/CMakeLists.txt), loaded with
// cuModuleLoadData.

struct PhxfsCopy {
    unsigned long long dst, src, n;
};

extern "C" __global__ void phxfs_scatter(const PhxfsCopy *copies, unsigned count) {
    for (unsigned c = blockIdx.x; c < count; c += gridDim.x) {
        const PhxfsCopy cp = copies[c];
        char *d = reinterpret_cast<char *>(cp.dst);
        const char *s = reinterpret_cast<const char *>(cp.src);
        unsigned long long head = 0;
        if (((cp.dst | cp.src) & 15) == 0) {
            const unsigned long long n16 = cp.n / 16;
            uint4 *d16 = reinterpret_cast<uint4 *>(d);
            const uint4 *s16 = reinterpret_cast<const uint4 *>(s);
            for (unsigned long long i = threadIdx.x; i < n16; i += blockDim.x)
                d16[i] = s16[i];
            head = n16 * 16;
        }
        for (unsigned long long i = head + threadIdx.x; i < cp.n; i += blockDim.x)
            d[i] = s[i];
    }
}

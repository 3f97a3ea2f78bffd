// strrev: read a file into GPU memory, reverse it there, write it back.
// The cuFile string-reversal example, on the Phoenix API.
//
//   $ echo -n "Hello, Phoenix World!" > test.txt
//   $ ./strrev test.txt       -> !dlroW xineohP ,olleH
//   $ ./strrev test.txt       -> Hello, Phoenix World!
#include <phxfs/phxfs.h>

#include <cuda_runtime.h>
#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <string>

namespace {

constexpr size_t kBuf = 4096;

__global__ void strrev(char *s, int *len) {
    int n = 0;
    while (n < static_cast<int>(kBuf) && s[n] != '\0')
        ++n;
    for (int i = 0, j = n - 1; i < j; ++i, --j) {
        const char t = s[i];
        s[i] = s[j];
        s[j] = t;
    }
    *len = n;
}

int die(const char *what) {
    std::fprintf(stderr, "strrev: %s: %s\n", what, phxfs_last_error());
    return 1;
}

} // namespace

int main(int argc, char **argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: %s FILE\n", argv[0]);
        return 2;
    }
    // O_DIRECT where the file system allows it; Phoenix takes either.
    int fd = open(argv[1], O_RDWR | O_DIRECT);
    if (fd < 0)
        fd = open(argv[1], O_RDWR);
    if (fd < 0) {
        std::perror(argv[1]);
        return 1;
    }
    if (phxfs_open(0) != 0)
        return die("phxfs_open");

    char *gpu_buf = nullptr;
    int *gpu_len = nullptr;
    if (cudaMalloc(&gpu_buf, kBuf) != cudaSuccess ||
        cudaMalloc(&gpu_len, sizeof(int)) != cudaSuccess) {
        std::fprintf(stderr, "strrev: cudaMalloc failed\n");
        return 1;
    }
    cudaMemset(gpu_buf, 0, kBuf);
    void *mapped = nullptr;
    if (phxfs_regmem(0, gpu_buf, kBuf, &mapped) != 0)
        return die("phxfs_regmem");

    const phxfs_fileid_t fid{fd, 0};
    const ssize_t got = phxfs_read(fid, gpu_buf, 0, kBuf - 1, 0);
    if (got < 0)
        return die("phxfs_read");

    strrev<<<1, 1>>>(gpu_buf, gpu_len);
    int len = 0;
    cudaMemcpy(&len, gpu_len, sizeof len, cudaMemcpyDeviceToHost);
    std::printf("sys_len : %d\n", len);
    if (phxfs_write(fid, gpu_buf, 0, static_cast<size_t>(len), 0) != len)
        return die("phxfs_write");

    std::string text(static_cast<size_t>(len), '\0');
    cudaMemcpy(text.data(), gpu_buf, text.size(), cudaMemcpyDeviceToHost);
    std::printf("%s\nSee also %s\n", text.c_str(), argv[1]);

    phxfs_deregmem(0, gpu_buf, kBuf);
    cudaFree(gpu_buf);
    cudaFree(gpu_len);
    phxfs_close(0);
    close(fd);
    return 0;
}

// batch_io.hpp - many transfers submitted and waited for together, through a
// libphxfs batch or through cuFile's batch API, for phxfs-bench's --batch
// runs and its kvcache workload alike.
#pragma once

#include "cufile_api.hpp"

#include <phxfs/phxfs.hpp>

#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <vector>

namespace phxbench {

// One transfer: len bytes between files[file] at file_off and the buffer at
// buf_off.
struct Piece {
    unsigned file = 0;
    uint64_t file_off = 0, buf_off = 0, len = 0;
};

// cuFile's batches hold at most this many entries (its default
// io_batchsize); deeper cuFile runs use several batch handles at once.
inline constexpr unsigned kCufileBatchMax = 128;

class BatchIo {
  public:
    // Transfers between `buf` and the open files `fds` (the caller keeps them
    // open), at most `depth` in flight. With cf_handles (one registered cuFile
    // handle per fd) the transfers go through cuFile's batch API, in
    // ceil(depth / 128) batch handles of at most 128 entries; else through one
    // phxfs batch of `depth` on device `device`. Throws std::runtime_error.
    BatchIo(int device, void *buf, std::span<const int> fds, bool write, unsigned depth,
            std::span<const phxcufile::CUfileHandle_t> cf_handles = {});
    ~BatchIo();
    BatchIo(const BatchIo &) = delete;
    BatchIo &operator=(const BatchIo &) = delete;

    // (index into pieces, bytes moved or a negative value, why it failed)
    using Done = std::function<void(size_t, int64_t, const char *)>;
    // Moves every piece, keeping up to depth in flight, and calls done for
    // each as the thread sees it complete. Returns when all have; throws when
    // submitting or waiting fails (done may throw too).
    void run(std::span<const Piece> pieces, const Done &done);

  private:
    void run_phxfs(std::span<const Piece> pieces, const Done &done);
    void run_cufile(std::span<const Piece> pieces, const Done &done);

    void *buf_;
    bool write_;
    unsigned depth_;
    // phxfs
    std::optional<phxfs::Device> dev_;
    std::vector<phxfs::File> files_;
    std::optional<phxfs::Batch> batch_;
    std::vector<phxfs_io> ios_;
    std::vector<phxfs_completion> cs_;
    // cuFile
    const phxcufile::Api *cf_ = nullptr;
    std::vector<phxcufile::CUfileHandle_t> cf_files_;
    std::vector<phxcufile::CUfileBatchHandle_t> cf_batches_;
    std::vector<phxcufile::CUfileIOParams_t> cf_params_;
    std::vector<phxcufile::CUfileIOEvents_t> cf_events_;
};

} // namespace phxbench

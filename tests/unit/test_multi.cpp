// Several devices in one process (#14), with host-memory devices standing in
// for GPUs (PHXFS_HOST_DEVICES=4): I/O through all of them at once, a batch
// spanning them, registrations and counters per device, one device closed
// while another is busy, and no device's requests waiting for another's
// (requests held in flight by delayed preads: src/core/fault.hpp). The
// cross-device rule for buffers (EXDEV) is checked on its own, as host
// devices cannot own memory; tests/gpu/test_gpu_multi.cpp runs it on GPUs.
#include "core/error.hpp"
#include "core/fault.hpp"
#include "memory/memory.hpp"
#include "testutil.hpp"

#include <phxfs/phxfs.hpp>

#include <atomic>
#include <chrono>
#include <thread>

using namespace phxtest;
using namespace std::chrono_literals;
namespace fault = phxfs::core::fault;
using fault::Site;
using Clock = std::chrono::steady_clock;

namespace {

// Before anything of the library runs (devices are discovered on first use).
const bool host_devices_set = [] {
    ::setenv("PHXFS_HOST_DEVICES", "4", 1);
    return true;
}();

constexpr size_t kFile = 4 << 20;

class Multi : public ::testing::Test {
  protected:
    void SetUp() override {
        ASSERT_TRUE(host_devices_set);
        saved_.size = sizeof saved_;
        ASSERT_EQ(phxfs_get_config(&saved_), 0);
        const int n = phxfs_device_count();
        for (int id = 0; id < n; ++id) {
            phxfs_device_info info{};
            info.size = sizeof info;
            ASSERT_EQ(phxfs_device_get_info(id, &info), 0) << phxfs_last_error();
            if (info.kind == PHXFS_DEVICE_HOST)
                ids_.push_back(id);
        }
        ASSERT_GE(ids_.size(), 4u) << "PHXFS_HOST_DEVICES=4 gives four host devices";
        ids_.resize(4);
        phxfs_config c = saved_;
        c.mode = PHXFS_MODE_AUTO;
        c.threads = 4;
        c.chunk_bytes = 64 << 10; // requests span many chunks and lanes
        c.staging_bytes = 2 * c.chunk_bytes * c.threads;
        ASSERT_EQ(phxfs_set_config(&c), 0) << phxfs_last_error();
        for (int id : ids_) {
            ASSERT_EQ(phxfs_open(id), 0) << phxfs_last_error();
            ASSERT_EQ(phxfs_reset_stats(id), 0);
        }
    }
    void TearDown() override {
        fault::disarm();
        for (int id : ids_)
            phxfs_close(id); // a test may have closed one already
        EXPECT_EQ(phxfs_set_config(&saved_), 0);
    }
    // A pattern file of device i's own seed.
    std::string file_of(size_t i, uint64_t n = kFile) {
        const std::string path = dir_.file("dev" + std::to_string(i));
        make_pattern_file(path, n, i + 1);
        return path;
    }
    static phxfs_stats stats(int id) {
        phxfs_stats st{};
        st.size = sizeof st;
        EXPECT_EQ(phxfs_get_stats(id, &st), 0);
        return st;
    }
    // Waits (at most 10 s) until `site` has given out n faults.
    static void wait_for_hits(Site site, unsigned n) {
        const auto until = Clock::now() + 10s;
        while (fault::hits(site) < n && Clock::now() < until)
            std::this_thread::sleep_for(1ms);
        ASSERT_GE(fault::hits(site), n) << "the delayed request never started";
    }

    std::vector<int> ids_;
    TempDir dir_;
    phxfs_config saved_{};
};

TEST_F(Multi, HostDevicesAreNumberedAfterTheOthers) {
    const int n = phxfs_device_count();
    EXPECT_EQ(ids_.back(), n - 1) << "host devices come last";
    for (int id : ids_) {
        phxfs_device_info info{};
        info.size = sizeof info;
        ASSERT_EQ(phxfs_device_get_info(id, &info), 0);
        EXPECT_EQ(info.direct, 0);
        EXPECT_EQ(info.kmod_index, -1);
        EXPECT_EQ(info.numa_node, -1) << "host memory hangs off no PCI device";
    }
}

// Every device read and written by threads of its own at once, through the
// fd calls, a file handle and futures: each device's bytes land right and
// its counters count its own traffic only.
TEST_F(Multi, ConcurrentIoOnEveryDevice) {
    constexpr int kRounds = 3;
    std::vector<std::string> paths;
    for (size_t i = 0; i < ids_.size(); ++i)
        paths.push_back(file_of(i));
    std::vector<std::thread> threads;
    std::atomic<int> bad{0};
    for (size_t i = 0; i < ids_.size(); ++i) {
        threads.emplace_back([&, i] {
            const int id = ids_[i];
            const uint64_t seed = i + 1;
            auto buf = host_buffer(kFile);
            const int fd = ::open(paths[i].c_str(), O_RDWR);
            for (int r = 0; r < kRounds; ++r) {
                std::memset(buf.get(), 0, kFile);
                if (phxfs_read({fd, id}, buf.get(), 0, kFile, 0) != static_cast<ssize_t>(kFile) ||
                    first_mismatch_fast(buf.get(), kFile, 0, seed) != kFile)
                    ++bad;
                // Unaligned, through the same device: written back, then read.
                if (phxfs_write({fd, id}, buf.get(), 4097, kFile / 2, 4097) !=
                    static_cast<ssize_t>(kFile / 2))
                    ++bad;
                try {
                    phxfs::Device dev(id); // one more open of the same device
                    phxfs::File f(paths[i], O_RDONLY, dev);
                    std::memset(buf.get(), 0, kFile);
                    std::vector<phxfs::Future> fs;
                    for (size_t off = 0; off < kFile; off += kFile / 8)
                        fs.push_back(f.pread(buf.get() + off, kFile / 8, static_cast<off_t>(off)));
                    for (auto &fu : fs)
                        if (fu.get() != kFile / 8)
                            ++bad;
                    if (first_mismatch_fast(buf.get(), kFile, 0, seed) != kFile)
                        ++bad;
                } catch (const phxfs::Error &e) {
                    ADD_FAILURE() << "device " << id << ": " << e.what();
                    ++bad;
                }
            }
            ::close(fd);
        });
    }
    for (auto &t : threads)
        t.join();
    EXPECT_EQ(bad.load(), 0);
    for (int id : ids_) {
        const phxfs_stats st = stats(id);
        const phxfs_path_stats &c = st.path[PHXFS_PATH_COMPAT];
        EXPECT_EQ(c.read_bytes, 2 * kRounds * kFile) << "device " << id;
        EXPECT_EQ(c.write_bytes, kRounds * kFile / 2) << "device " << id;
        EXPECT_EQ(c.read_calls, kRounds * (1 + 8)) << "device " << id;
        EXPECT_EQ(c.write_calls, static_cast<uint64_t>(kRounds)) << "device " << id;
        EXPECT_EQ(st.errors, 0u) << "device " << id;
        EXPECT_EQ(st.path[PHXFS_PATH_DIRECT].read_bytes, 0u);
    }
}

// Registrations belong to their device: the same host range may be
// registered on two devices, each counts its own, and one device cannot
// deregister another's.
TEST_F(Multi, RegistrationsArePerDevice) {
    auto buf = host_buffer(1 << 20);
    void *t1 = nullptr, *t2 = nullptr;
    ASSERT_EQ(phxfs_regmem(ids_[1], buf.get(), 1 << 20, &t1), 0) << phxfs_last_error();
    ASSERT_EQ(phxfs_regmem(ids_[2], buf.get(), 1 << 20, &t2), 0) << phxfs_last_error();
    errno = 0;
    EXPECT_EQ(phxfs_regmem(ids_[1], buf.get() + 4096, 4096, &t1), -1);
    EXPECT_EQ(errno, EEXIST) << "overlap on the same device";
    EXPECT_EQ(stats(ids_[0]).registrations, 0u);
    EXPECT_EQ(stats(ids_[1]).registrations, 1u);
    EXPECT_EQ(stats(ids_[2]).registrations, 1u);
    errno = 0;
    EXPECT_EQ(phxfs_deregmem(ids_[3], buf.get(), 1 << 20), -1);
    EXPECT_EQ(errno, EINVAL) << "device 3 has no such registration";

    // Registered on device 1, the buffer still serves a read through device 3.
    const std::string path = file_of(3, 1 << 20);
    const int fd = ::open(path.c_str(), O_RDONLY);
    EXPECT_EQ(phxfs_read({fd, ids_[3]}, buf.get(), 0, 1 << 20, 0), 1 << 20);
    EXPECT_EQ(first_mismatch_fast(buf.get(), 1 << 20, 0, 4), 1u << 20);
    ::close(fd);

    EXPECT_EQ(phxfs_deregmem(ids_[1], buf.get(), 1 << 20), 0) << phxfs_last_error();
    EXPECT_EQ(stats(ids_[1]).registrations, 0u);
    EXPECT_EQ(stats(ids_[2]).registrations, 1u);
    EXPECT_EQ(phxfs_close(ids_[2]), 0) << "the last close releases device 2's registration";
    EXPECT_EQ(stats(ids_[2]).registrations, 0u);
    EXPECT_EQ(phxfs_open(ids_[2]), 0);
}

// One batch holding requests of every device (in runs, and interleaved):
// each completes right, and each device counts its own.
TEST_F(Multi, BatchSpanningDevices) {
    constexpr unsigned kPer = 64, kPiece = 16 << 10;
    std::vector<int> fds;
    std::vector<phxfs_file_t> fhs;
    for (size_t i = 0; i < ids_.size(); ++i) {
        const std::string path = file_of(i, kPer * kPiece);
        fds.push_back(::open(path.c_str(), O_RDONLY));
        phxfs_file_t fh = nullptr;
        ASSERT_EQ(phxfs_file_open(&fh, ids_[i], fds.back()), 0) << phxfs_last_error();
        fhs.push_back(fh);
    }
    const size_t n = ids_.size() * kPer;
    auto buf = host_buffer(n * kPiece);
    std::memset(buf.get(), 0, n * kPiece);
    std::vector<phxfs_io> ios(n);
    for (size_t k = 0; k < n; ++k) {
        // The first half in runs of one device, the second interleaved.
        const size_t dev = k < n / 2 ? k / (kPer / 2) : k % ids_.size();
        const uint64_t piece = (k * 7) % kPer;
        ios[k] = {fhs[dev],
                  PHXFS_OP_READ,
                  0,
                  buf.get(),
                  k * kPiece,
                  kPiece,
                  piece * kPiece,
                  reinterpret_cast<void *>(k)};
    }
    phxfs::Batch b(static_cast<unsigned>(n));
    b.submit(ios.data(), static_cast<unsigned>(n));
    std::vector<phxfs_completion> cs(n);
    ASSERT_EQ(b.reap(cs.data(), static_cast<unsigned>(n), static_cast<unsigned>(n), 60s), n);
    std::vector<uint64_t> per_device(ids_.size());
    for (const phxfs_completion &c : cs) {
        ASSERT_EQ(c.status, PHXFS_IO_DONE) << c.error;
        ASSERT_EQ(c.result, kPiece);
        const auto k = reinterpret_cast<size_t>(c.user_data);
        const size_t dev = k < n / 2 ? k / (kPer / 2) : k % ids_.size();
        ++per_device[dev];
        ASSERT_EQ(first_mismatch(buf.get() + k * kPiece, kPiece, ios[k].f_offset, dev + 1), kPiece)
            << "request " << k << " of device " << ids_[dev];
    }
    for (size_t i = 0; i < ids_.size(); ++i) {
        const phxfs_stats st = stats(ids_[i]);
        EXPECT_EQ(st.path[PHXFS_PATH_COMPAT].read_calls, per_device[i]) << "device " << ids_[i];
        EXPECT_EQ(st.path[PHXFS_PATH_COMPAT].read_bytes, per_device[i] * kPiece);
    }
    for (size_t i = 0; i < fhs.size(); ++i) {
        EXPECT_EQ(phxfs_file_close(fhs[i]), 0);
        ::close(fds[i]);
    }
}

// A batch's runs on two devices go at once: with each device's read held
// 600 ms, the group takes about 600 ms, not 1200.
TEST_F(Multi, BatchRunsDevicesAtOnce) {
    std::vector<int> fds;
    std::vector<phxfs_file_t> fhs;
    for (size_t i = 0; i < 2; ++i) {
        const std::string path = file_of(i, 1 << 20);
        fds.push_back(::open(path.c_str(), O_RDONLY));
        phxfs_file_t fh = nullptr;
        ASSERT_EQ(phxfs_file_open(&fh, ids_[i], fds.back()), 0) << phxfs_last_error();
        fhs.push_back(fh);
    }
    auto buf = host_buffer(2 * 4096);
    const phxfs_io ios[] = {{fhs[0], PHXFS_OP_READ, 0, buf.get(), 0, 4096, 0, nullptr},
                            {fhs[1], PHXFS_OP_READ, 0, buf.get(), 4096, 4096, 0, nullptr}};
    fault::arm(Site::pread, {.delay_ms = 600}, 0, 2);
    const auto t0 = Clock::now();
    phxfs::Batch b(2);
    b.submit(ios, 2);
    phxfs_completion cs[2];
    ASSERT_EQ(b.reap(cs, 2, 2, 30s), 2u);
    const auto took = Clock::now() - t0;
    for (const phxfs_completion &c : cs)
        EXPECT_EQ(c.status, PHXFS_IO_DONE) << c.error;
    EXPECT_EQ(fault::hits(Site::pread), 2u);
    EXPECT_LT(took, 1100ms) << "the devices' runs went one after the other";
    EXPECT_EQ(first_mismatch(buf.get(), 4096, 0, 1), 4096u);
    EXPECT_EQ(first_mismatch(buf.get() + 4096, 4096, 0, 2), 4096u);
    for (size_t i = 0; i < fhs.size(); ++i) {
        EXPECT_EQ(phxfs_file_close(fhs[i]), 0);
        ::close(fds[i]);
    }
}

// Futures of one device complete while another device's future is held in
// flight: each device has an executor of its own.
TEST_F(Multi, FuturesOfOneDeviceDoNotWaitForAnother) {
    const std::string p0 = file_of(0, 1 << 20), p1 = file_of(1, 1 << 20);
    phxfs::Device d0(ids_[0]), d1(ids_[1]);
    phxfs::File f0(p0, O_RDONLY, d0), f1(p1, O_RDONLY, d1);
    auto b0 = host_buffer(4096), b1 = host_buffer(4096);
    fault::arm(Site::pread, {.delay_ms = 1500}, 0, 1);
    phxfs::Future slow = f0.pread(b0.get(), 4096, 0);
    wait_for_hits(Site::pread, 1);
    phxfs::Future quick = f1.pread(b1.get(), 4096, 0);
    EXPECT_TRUE(quick.wait_for(1s)) << "device 1's future waited for device 0's";
    EXPECT_FALSE(slow.ready()) << "device 0's read is still held";
    EXPECT_EQ(quick.get(), 4096u);
    EXPECT_EQ(first_mismatch(b1.get(), 4096, 0, 2), 4096u);
    EXPECT_EQ(slow.get(), 4096u);
    EXPECT_EQ(first_mismatch(b0.get(), 4096, 0, 1), 4096u);
}

// Closing (and reopening) one device while another's request is in flight
// neither waits for that request nor disturbs it.
TEST_F(Multi, CloseOneDeviceWhileAnotherIsBusy) {
    const std::string p0 = file_of(0, 1 << 20), p1 = file_of(1, 1 << 20);
    auto reg = host_buffer(1 << 20);
    void *target = nullptr;
    ASSERT_EQ(phxfs_regmem(ids_[1], reg.get(), 1 << 20, &target), 0);
    fault::arm(Site::pread, {.delay_ms = 1500}, 0, 1);
    auto b0 = host_buffer(1 << 20);
    ssize_t got0 = -2;
    std::thread busy([&] {
        const int fd = ::open(p0.c_str(), O_RDONLY);
        got0 = phxfs_read({fd, ids_[0]}, b0.get(), 0, 1 << 20, 0);
        ::close(fd);
    });
    wait_for_hits(Site::pread, 1);
    const auto t0 = Clock::now();
    EXPECT_EQ(phxfs_close(ids_[1]), 0) << phxfs_last_error();
    EXPECT_LT(Clock::now() - t0, 700ms) << "closing device 1 waited for device 0's request";
    const int fd1 = ::open(p1.c_str(), O_RDONLY);
    errno = 0;
    EXPECT_EQ(phxfs_read({fd1, ids_[1]}, reg.get(), 0, 4096, 0), -1);
    EXPECT_EQ(errno, EBADF) << "device 1 is closed";
    ASSERT_EQ(phxfs_open(ids_[1]), 0);
    EXPECT_EQ(stats(ids_[1]).registrations, 0u) << "the close released the registration";
    EXPECT_EQ(phxfs_read({fd1, ids_[1]}, reg.get(), 0, 1 << 20, 0), 1 << 20);
    EXPECT_EQ(first_mismatch_fast(reg.get(), 1 << 20, 0, 2), 1u << 20);
    EXPECT_LT(Clock::now() - t0, 1200ms) << "device 1's I/O waited for device 0's request";
    ::close(fd1);
    busy.join();
    EXPECT_EQ(got0, 1 << 20) << phxfs_last_error();
    EXPECT_EQ(first_mismatch_fast(b0.get(), 1 << 20, 0, 1), 1u << 20);
}

// The cross-device rule, as every backend applies it: memory of one GPU
// goes only with that GPU's device id (EXDEV, naming the id to use), never
// routed; host memory goes anywhere, managed memory with any GPU.
TEST(CrossDevice, OwnerRule) {
    using phxfs::core::check_owner;
    using phxfs::core::MemInfo;
    using phxfs::core::MemKind;
    const MemInfo host{}, gpu1{MemKind::cuda, 1, false}, managed{MemKind::cuda, 0, true};
    for (int dev : {-1, 0, 1, 7})
        EXPECT_NO_THROW(check_owner(host, dev));
    EXPECT_NO_THROW(check_owner(gpu1, 1));
    for (int dev : {0, 1, 3})
        EXPECT_NO_THROW(check_owner(managed, dev));
    try {
        check_owner(gpu1, 0);
        ADD_FAILURE() << "GPU 1's memory passed with GPU 0";
    } catch (const phxfs::core::Error &e) {
        EXPECT_EQ(e.err(), EXDEV);
        EXPECT_NE(std::string(e.what()).find("memory of GPU 1 (phxfs device id 1)"),
                  std::string::npos)
            << e.what();
        EXPECT_NE(std::string(e.what()).find("this device is GPU 0"), std::string::npos);
    }
    for (const MemInfo &mi : {gpu1, managed}) {
        try {
            check_owner(mi, -1);
            ADD_FAILURE() << "GPU memory passed with a host device";
        } catch (const phxfs::core::Error &e) {
            EXPECT_EQ(e.err(), EXDEV);
            EXPECT_NE(std::string(e.what()).find("a device of host memory"), std::string::npos);
        }
    }
}

} // namespace

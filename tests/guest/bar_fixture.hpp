// The fixture of the tests that move bytes between a disk and the pcibar BAR
// through the public API (test_direct.cpp, and test_fabric.cpp over NVMe-oF
// disks): BAR and disk ranges no other test touches, registrations undone
// at the end of each test, the device's statistics.
#pragma once

#include "guest.hpp"

#include <mutex>
#include <utility>
#include <vector>

namespace phxguest {

// Hands out BAR and disk ranges that no other test touches.
struct Ranges {
    std::mutex m;
    uint64_t bar = env_u64("PHXFS_GUEST_BAR_OFF", 0);
    uint64_t disk = env_u64("PHXFS_GUEST_DISK_OFF", 0);
    std::pair<uint64_t, uint64_t> take(uint64_t len) {
        std::lock_guard lock(m);
        const uint64_t step = (len + (1 << 20) - 1) / (1 << 20) * (1 << 20) + (1 << 20);
        auto r = std::make_pair(bar, disk);
        bar += step;
        disk += step;
        return r;
    }
};
inline Ranges ranges;

inline phxfs_stats stats() {
    phxfs_stats st{};
    st.size = sizeof st;
    EXPECT_EQ(phxfs_get_stats(0, &st), 0);
    return st;
}

// The direct-I/O offset alignment statx reports for path, else 4 KiB.
inline uint64_t dio_align(const char *path) {
    struct statx st {};
    if (::statx(AT_FDCWD, path, 0, STATX_DIOALIGN, &st) == 0 && (st.stx_mask & STATX_DIOALIGN))
        return st.stx_dio_offset_align;
    return 4096;
}

inline const char *disk_path() {
    return raw_disk() ? raw_disk() : "/dev/nvme0n1";
}

class Guest : public ::testing::Test {
  protected:
    void SetUp() override {
        ASSERT_EQ(phxfs_open(0), 0) << phxfs_last_error();
        phxfs_device_info info{};
        info.size = sizeof info;
        ASSERT_EQ(phxfs_device_get_info(0, &info), 0);
        ASSERT_EQ(info.kind, PHXFS_DEVICE_PCIBAR) << info.name;
        ASSERT_EQ(info.direct, 1) << info.why_not_direct;
        ASSERT_EQ(phxfs_reset_stats(0), 0);
    }
    void TearDown() override {
        for (auto &[addr, len] : regs_)
            EXPECT_EQ(phxfs_deregmem(0, reinterpret_cast<void *>(addr), len), 0)
                << phxfs_last_error();
        EXPECT_EQ(phxfs_close(0), 0);
    }
    // Registers BAR [off, off + len) and returns its CPU mapping.
    uint8_t *reg(uint64_t off, uint64_t len) {
        void *t = nullptr;
        EXPECT_EQ(phxfs_regmem(0, reinterpret_cast<void *>(off), len, &t), 0) << phxfs_last_error();
        regs_.emplace_back(off, len);
        return static_cast<uint8_t *>(t);
    }
    std::vector<std::pair<uint64_t, uint64_t>> regs_;
};

class GuestFs : public Guest {
  protected:
    void SetUp() override {
        const char *fs = std::getenv("PHXFS_GUEST_FS");
        if (!fs || !*fs)
            GTEST_SKIP() << "PHXFS_GUEST_FS not set";
        dir_ = fs;
        Guest::SetUp();
    }
    std::string dir_;
};

} // namespace phxguest

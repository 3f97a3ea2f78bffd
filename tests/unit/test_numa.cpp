// memory/numa: the NUMA node of a device's PCI function from sysfs (fake
// sysfs trees give it every shape), and the memory-policy scope its staging
// memory is allocated in, on this machine's own nodes.
#include "memory/numa.hpp"
#include "testutil.hpp"

#include <linux/mempolicy.h>
#include <sys/mman.h>
#include <sys/syscall.h>

#include <filesystem>
#include <fstream>

namespace fs = std::filesystem;
using phxfs::core::node_of;
using phxfs::core::pci_numa_node;
using phxfs::core::PreferredNode;

using phxtest::put;

namespace {

// bus/pci/devices of a two-socket machine: a GPU on node 1, a NIC on node
// 0, a device whose firmware tells nothing (-1), one without the file.
class FakeNumaSysfs : public ::testing::Test {
  protected:
    void SetUp() override {
        const fs::path d = fs::path(root_.path()) / "bus/pci/devices";
        put(d / "0000:3b:00.0/numa_node", "1");
        put(d / "0000:18:00.0/numa_node", "0");
        put(d / "0000:af:00.0/numa_node", "-1");
        fs::create_directories(d / "0000:5e:00.0");
        put(d / "0000:86:00.0/numa_node", "garbage");
    }
    int node(const std::string &bus_id) { return pci_numa_node(bus_id, root_.path()); }
    phxtest::TempDir root_;
};

TEST_F(FakeNumaSysfs, NodeOfTheDevice) {
    EXPECT_EQ(node("0000:3b:00.0"), 1);
    EXPECT_EQ(node("0000:18:00.0"), 0);
}

TEST_F(FakeNumaSysfs, BusIdsAsCudaAndNvidiaSmiSpellThem) {
    EXPECT_EQ(node("0000:3B:00.0"), 1) << "upper case (cuDeviceGetPCIBusId)";
    EXPECT_EQ(node("00000000:3B:00.0"), 1) << "an 8-digit domain (nvidia-smi)";
}

TEST_F(FakeNumaSysfs, NoNodeKnown) {
    EXPECT_EQ(node("0000:af:00.0"), -1) << "firmware says -1";
    EXPECT_EQ(node("0000:5e:00.0"), -1) << "no numa_node file";
    EXPECT_EQ(node("0000:86:00.0"), -1) << "unreadable";
    EXPECT_EQ(node("0000:00:00.0"), -1) << "no such device";
    EXPECT_EQ(node(""), -1) << "host memory";
    EXPECT_EQ(node("../../../etc"), -1) << "not a bus id";
}

int thread_policy(unsigned long &mask) {
    int mode = -1;
    unsigned long m[1024 / (8 * sizeof(unsigned long))] = {};
    if (::syscall(SYS_get_mempolicy, &mode, m, 1024, nullptr, 0) != 0)
        return -1;
    mask = m[0];
    return mode;
}

// The scope sets MPOL_PREFERRED for node 0 (every machine has it), memory
// faulted in inside it lands there, and the thread's policy is back after.
TEST(PreferredNode, SetsAndRestoresTheThreadsPolicy) {
    unsigned long mask = 0;
    const int before = thread_policy(mask);
    if (before < 0)
        GTEST_SKIP() << "get_mempolicy: " << std::strerror(errno) << " (a kernel without NUMA)";
    {
        PreferredNode near(0);
        ASSERT_TRUE(near.active()) << std::strerror(errno);
        EXPECT_EQ(thread_policy(mask), MPOL_PREFERRED);
        EXPECT_EQ(mask, 1ul);
        const size_t len = 1 << 20;
        void *p = ::mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        ASSERT_NE(p, MAP_FAILED);
        std::memset(p, 1, len);
        EXPECT_EQ(node_of(p), 0);
        ::munmap(p, len);
    }
    EXPECT_EQ(thread_policy(mask), before);
}

TEST(PreferredNode, NoNodeChangesNothing) {
    unsigned long mask = 0;
    const int before = thread_policy(mask);
    PreferredNode none(-1);
    EXPECT_FALSE(none.active());
    EXPECT_EQ(thread_policy(mask), before);
    PreferredNode absurd(1 << 20);
    EXPECT_FALSE(absurd.active());
}

} // namespace

// The fixture of the GPU tests: device 0 open, and a CUDA GPU; skipped on
// machines without one.
#pragma once

#include "../unit/testutil.hpp"

#include <cuda_runtime.h>

namespace phxtest {

class GpuTest : public DeviceTest {
  protected:
    void SetUp() override {
        int n = 0;
        if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0)
            GTEST_SKIP() << "no GPU";
        DeviceTest::SetUp();
        opened_ = true;
        phxfs_device_info info{};
        info.size = sizeof info;
        ASSERT_EQ(phxfs_device_get_info(0, &info), 0);
        ASSERT_EQ(info.kind, PHXFS_DEVICE_CUDA) << "device 0 must be the GPU";
    }
    void TearDown() override {
        if (opened_)
            DeviceTest::TearDown();
    }
    bool opened_ = false;
};

} // namespace phxtest

// Configuration from the environment (PHXFS_MODE and friends).
#include "core/config.hpp"
#include "core/error.hpp"

#include <gtest/gtest.h>

#include <cstdlib>
#include <initializer_list>

namespace {

struct EnvVar {
    EnvVar(const char *name, const char *value) : name_(name) { ::setenv(name, value, 1); }
    ~EnvVar() { ::unsetenv(name_); }
    const char *name_;
};

TEST(Env, Defaults) {
    const phxfs::core::Config c = phxfs::core::config_from_env();
    EXPECT_EQ(c.mode, PHXFS_MODE_AUTO);
    EXPECT_GE(c.threads, 2u);
    EXPECT_EQ(c.chunk_bytes, 4u << 20);
    EXPECT_EQ(c.staging_bytes, 2 * c.chunk_bytes * c.threads);
}

TEST(Env, Modes) {
    {
        EnvVar v("PHXFS_MODE", "direct");
        EXPECT_EQ(phxfs::core::config_from_env().mode, PHXFS_MODE_DIRECT);
    }
    {
        EnvVar v("PHXFS_MODE", "compat");
        EXPECT_EQ(phxfs::core::config_from_env().mode, PHXFS_MODE_COMPAT);
    }
    EnvVar v("PHXFS_MODE", "fast");
    try {
        phxfs::core::config_from_env();
        FAIL() << "bad mode accepted";
    } catch (const phxfs::core::Error &e) {
        EXPECT_EQ(e.err(), EINVAL);
        EXPECT_NE(std::string(e.what()).find("PHXFS_MODE"), std::string::npos);
    }
}

TEST(Env, Sizes) {
    EnvVar t("PHXFS_THREADS", "5"), c("PHXFS_CHUNK_KB", "256"), s("PHXFS_STAGING_MB", "64");
    const phxfs::core::Config cfg = phxfs::core::config_from_env();
    EXPECT_EQ(cfg.threads, 5u);
    EXPECT_EQ(cfg.chunk_bytes, 256u << 10);
    EXPECT_EQ(cfg.staging_bytes, 64u << 20);
}

TEST(Env, BadNumbers) {
    for (const char *bad : {"abc", "-3", "0", "12x"}) {
        EnvVar t("PHXFS_THREADS", bad);
        EXPECT_THROW(phxfs::core::config_from_env(), phxfs::core::Error) << bad;
    }
    EnvVar c("PHXFS_CHUNK_KB", "3");
    EXPECT_THROW(phxfs::core::config_from_env(), phxfs::core::Error);
}

// A numeric setting of the environment: def when unset, each of goods taken
// as it is, each of bads refused.
void expect_number_setting(const char *var, unsigned phxfs::core::Config::*field, unsigned def,
                           std::initializer_list<const char *> goods,
                           std::initializer_list<const char *> bads) {
    EXPECT_EQ(phxfs::core::config_from_env().*field, def) << var;
    for (const char *n : goods) {
        EnvVar d(var, n);
        EXPECT_EQ(phxfs::core::config_from_env().*field, std::strtoul(n, nullptr, 10)) << var;
    }
    for (const char *bad : bads) {
        EnvVar d(var, bad);
        EXPECT_THROW(phxfs::core::config_from_env(), phxfs::core::Error) << var << "=" << bad;
    }
}

// The io_uring depth of a group's direct requests: 128 unset, 0 turns
// io_uring off, more than 4096 or not a number is refused.
TEST(Env, UringDepth) {
    expect_number_setting("PHXFS_URING_DEPTH", &phxfs::core::Config::uring_depth, 128,
                          {"0", "64", "4096"}, {"4097", "many", "-1", "99999999999"});
}

// Idle workers' spin: 50 us unset, 0 turns it off, more than a second or not
// a number is refused.
TEST(Env, WorkerSpin) {
    expect_number_setting("PHXFS_WORKER_SPIN_US", &phxfs::core::Config::worker_spin_us, 50,
                          {"0", "200", "1000000"}, {"1000001", "long", "-5", "99999999999"});
}

} // namespace

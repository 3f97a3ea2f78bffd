// The public C API: argument checks, then the device layer; every failure
// becomes -1, errno and a last-error message.
#include "core/config.hpp"
#include "core/device.hpp"
#include "core/error.hpp"
#include "core/request.hpp"

#include <phxfs/phxfs.h>

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <limits>

using namespace phxfs::core;

#define PHXFS_API extern "C" __attribute__((visibility("default")))

namespace {

template <typename T> void check_struct(const T *p, const char *what) {
    if (!p)
        fail(EINVAL, std::string(what) + " is NULL");
    if (p->size < sizeof(T))
        fail(EINVAL, std::string(what) + "->size is " + std::to_string(p->size) + ", expected " +
                         std::to_string(sizeof(T)) + " (set it to sizeof)");
}

// Fills *p, a struct that grew since 0.1: a caller built against 0.1 passes
// the smaller size (at least v01 bytes) and gets the fields it knows, no more.
template <typename T, typename Fill>
void fill_versioned(T *p, const char *what, size_t v01, Fill &&fill) {
    if (!p || p->size < v01)
        check_struct(p, what);
    T full{};
    fill(full);
    full.size = p->size;
    std::memcpy(p, &full, std::min<size_t>(p->size, sizeof full));
}

void check_io(off_t buf_offset, size_t nbyte, off_t f_offset) {
    if (buf_offset < 0 || f_offset < 0)
        fail(EINVAL, "negative offset");
    check_io_range(static_cast<uint64_t>(buf_offset), nbyte, static_cast<uint64_t>(f_offset));
}

} // namespace

PHXFS_API int phxfs_open(int deviceID) {
    return c_call([&] {
        device(deviceID).open();
        return 0;
    });
}

PHXFS_API int phxfs_close(int deviceID) {
    return c_call([&] {
        device(deviceID).close();
        return 0;
    });
}

PHXFS_API int phxfs_regmem(int device_id, const void *addr, size_t len, void **target_addr) {
    return c_call([&] {
        if (!target_addr)
            fail(EINVAL, "target_addr is NULL");
        *target_addr = device(device_id).regmem(addr, len);
        return 0;
    });
}

PHXFS_API int phxfs_deregmem(int device_id, const void *addr, size_t len) {
    return c_call([&] {
        device(device_id).deregmem(addr, len);
        return 0;
    });
}

PHXFS_API ssize_t phxfs_read(phxfs_fileid_t fid, void *buf, off_t buf_offset, size_t nbyte,
                             off_t f_offset) {
    return c_call([&]() -> ssize_t {
        check_io(buf_offset, nbyte, f_offset);
        return static_cast<ssize_t>(
            device(fid.deviceID)
                .io(false, fid.fd, static_cast<char *>(buf) + buf_offset, nbyte, f_offset));
    });
}

PHXFS_API ssize_t phxfs_write(phxfs_fileid_t fid, const void *buf, off_t buf_offset, size_t nbyte,
                              off_t f_offset) {
    return c_call([&]() -> ssize_t {
        check_io(buf_offset, nbyte, f_offset);
        return static_cast<ssize_t>(
            device(fid.deviceID)
                .io(true, fid.fd, static_cast<const char *>(buf) + buf_offset, nbyte, f_offset));
    });
}

PHXFS_API int phxfs_get_config(struct phxfs_config *cfg) {
    return c_call([&] {
        check_struct(cfg, "cfg");
        const Config c = config();
        cfg->mode = c.mode;
        cfg->threads = c.threads;
        cfg->trace = c.trace ? 1 : 0;
        cfg->chunk_bytes = c.chunk_bytes;
        cfg->staging_bytes = c.staging_bytes;
        return 0;
    });
}

PHXFS_API int phxfs_set_config(const struct phxfs_config *cfg) {
    return c_call([&] {
        check_struct(cfg, "cfg");
        if (cfg->mode > PHXFS_MODE_COMPAT)
            fail(EINVAL, "mode must be auto, direct or compat");
        Config c = config(); // what phxfs_config does not carry stays as it is
        c.mode = static_cast<phxfs_mode>(cfg->mode);
        c.threads = cfg->threads;
        if (cfg->trace > 1)
            fail(EINVAL, "trace must be 0 or 1");
        c.trace = cfg->trace == 1;
        c.chunk_bytes = cfg->chunk_bytes;
        c.staging_bytes = cfg->staging_bytes;
        set_config(c);
        for (auto &d : devices())
            d->config_changed(c.staging_bytes);
        return 0;
    });
}

PHXFS_API int phxfs_device_count(void) {
    return c_call([] { return static_cast<int>(devices().size()); });
}

PHXFS_API int phxfs_device_get_info(int device_id, struct phxfs_device_info *info) {
    return c_call([&] {
        fill_versioned(info, "info", offsetof(phxfs_device_info, page_type),
                       [&](phxfs_device_info &full) { device(device_id).info(full); });
        return 0;
    });
}

PHXFS_API int phxfs_get_stats(int device_id, struct phxfs_stats *stats) {
    return c_call([&] {
        fill_versioned(stats, "stats", offsetof(phxfs_stats, staging_bytes),
                       [&](phxfs_stats &full) { device(device_id).stats(full); });
        return 0;
    });
}

PHXFS_API int phxfs_reset_stats(int device_id) {
    return c_call([&] {
        device(device_id).reset_stats();
        return 0;
    });
}

PHXFS_API const char *phxfs_last_error(void) {
    return last_error().c_str();
}

PHXFS_API const char *phxfs_path_name(enum phxfs_path path) {
    switch (path) {
    case PHXFS_PATH_DIRECT:
        return "direct";
    case PHXFS_PATH_COMPAT:
        return "compat";
    default:
        return "unknown";
    }
}

PHXFS_API const char *phxfs_mode_name(enum phxfs_mode mode) {
    switch (mode) {
    case PHXFS_MODE_AUTO:
        return "auto";
    case PHXFS_MODE_DIRECT:
        return "direct";
    case PHXFS_MODE_COMPAT:
        return "compat";
    default:
        return "unknown";
    }
}

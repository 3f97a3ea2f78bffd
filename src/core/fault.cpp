#include "core/fault.hpp"

#ifdef PHXFS_FAULT_INJECTION

#include <chrono>
#include <mutex>
#include <thread>

namespace phxfs::core::fault {

namespace {

struct Armed {
    Fault fault;
    unsigned skip = 0, times = 0, calls = 0, hits = 0;
    bool on = false;
};

std::mutex m;
Armed sites[static_cast<unsigned>(Site::count)];

} // namespace

void arm(Site site, Fault f, unsigned skip, unsigned times) {
    std::lock_guard lock(m);
    sites[static_cast<unsigned>(site)] = {f, skip, times, 0, 0, true};
}

void disarm() {
    std::lock_guard lock(m);
    for (Armed &a : sites)
        a = Armed{};
}

unsigned hits(Site site) {
    std::lock_guard lock(m);
    return sites[static_cast<unsigned>(site)].hits;
}

std::optional<Fault> at(Site site) {
    Fault f;
    {
        std::lock_guard lock(m);
        Armed &a = sites[static_cast<unsigned>(site)];
        if (!a.on)
            return std::nullopt;
        const unsigned call = a.calls++;
        if (call < a.skip || (a.times && call >= a.skip + a.times))
            return std::nullopt;
        ++a.hits;
        f = a.fault;
    }
    if (f.delay_ms)
        std::this_thread::sleep_for(std::chrono::milliseconds(f.delay_ms));
    return f;
}

} // namespace phxfs::core::fault

#endif

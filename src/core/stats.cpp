#include "core/stats.hpp"

namespace phxfs::core {

void Stats::snapshot(phxfs_stats &out, uint64_t registrations) const {
    for (int i = 0; i < PHXFS_PATH_COUNT; ++i) {
        const PathCounters &p = paths_[i];
        out.path[i] = {p.read_bytes.load(),  p.read_calls.load(),  p.read_ns.load(),
                       p.write_bytes.load(), p.write_calls.load(), p.write_ns.load()};
    }
    out.errors = errors_.load();
    out.fallbacks = fallbacks_.load();
    out.registrations = registrations;
    out.staging_bytes = staging_bytes_.load();
}

void Stats::reset() {
    for (PathCounters &p : paths_) {
        for (auto *c : {&p.read_bytes, &p.read_calls, &p.read_ns, &p.write_bytes, &p.write_calls,
                        &p.write_ns})
            c->store(0);
    }
    errors_.store(0);
    fallbacks_.store(0);
}

} // namespace phxfs::core

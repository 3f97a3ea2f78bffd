// phxfs-bench - a gdsio-like load generator for libphxfs. See tools/README.md.
#include "datafile.hpp"
#include "kvcache.hpp"
#include "options.hpp"
#include "report.hpp"
#include "stream.hpp"
#include "workload.hpp"

#include <unistd.h>

#include <cstdio>
#include <exception>
#include <functional>
#include <string>
#include <vector>

namespace {

using namespace phxbench;

// Prints one run's report; false when the run failed (error or mismatch).
bool report(const Options &o, const RunResult &r) {
    const Summary s = summarize(o, r);
    if (!r.error.empty() && !o.json) {
        std::fprintf(stderr, "phxfs-bench: %s\n", r.error.c_str());
        return false;
    }
    if (o.json)
        std::printf("%s\n", json_report(o, r, s).dump().c_str());
    else
        std::printf("%s\n", text_report(o, r, s).c_str());
    std::fflush(stdout);
    if (!r.error.empty()) {
        std::fprintf(stderr, "phxfs-bench: %s\n", r.error.c_str());
        return false;
    }
    if (o.verify && !r.verified) {
        std::fprintf(stderr, "phxfs-bench: verify failed: first mismatch at %s offset %llu%s\n",
                     o.io == IoType::kvcache ? "store" : "file",
                     static_cast<unsigned long long>(*r.mismatch),
                     o.io == IoType::kvcache ? (" (" + r.mismatch_detail + ")").c_str() : "");
        return false;
    }
    return true;
}

} // namespace

int main(int argc, char **argv) {
    const Options o = parse_options(argc, argv);
    std::vector<std::string> created; // removed at exit unless --keep
    int rc = 0;
    try {
        if (o.io == IoType::kvcache) {
            created = prepare_kv_store(o);
            rc = report(o, run_kvcache(o)) ? 0 : 1;
        } else {
            bool made = false;
            const uint64_t file_size = prepare_file(o.file, o.file_size, o.verify, made);
            if (made)
                created.push_back(o.file);
            for (uint64_t io : o.io_sizes)
                if (!report(o, o.stream ? run_stream(o, io, file_size)
                                        : run_workload(o, io, file_size))) {
                    rc = 1;
                    break;
                }
        }
    } catch (const std::exception &e) {
        std::fprintf(stderr, "phxfs-bench: %s\n", e.what());
        rc = 1;
    }
    if (!o.keep)
        for (const std::string &p : created)
            ::remove(p.c_str()); // files, then their directory
    return rc;
}

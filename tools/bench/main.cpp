// phxfs-bench - a gdsio-like load generator for libphxfs. See tools/README.md.
#include "options.hpp"
#include "report.hpp"
#include "stream.hpp"
#include "workload.hpp"

#include <unistd.h>

#include <cstdio>
#include <exception>

int main(int argc, char **argv) {
    using namespace phxbench;
    const Options o = parse_options(argc, argv);
    bool created = false;
    int rc = 0;
    try {
        const uint64_t file_size = prepare_file(o.file, o.file_size, o.verify, created);
        for (uint64_t io : o.io_sizes) {
            const RunResult r =
                o.stream ? run_stream(o, io, file_size) : run_workload(o, io, file_size);
            const Summary s = summarize(o, r);
            if (!r.error.empty() && !o.json) {
                std::fprintf(stderr, "phxfs-bench: %s\n", r.error.c_str());
                rc = 1;
                break;
            }
            if (o.json)
                std::printf("%s\n", json_report(o, r, s).dump().c_str());
            else
                std::printf("%s\n", text_report(o, r, s).c_str());
            std::fflush(stdout);
            if (!r.error.empty()) {
                std::fprintf(stderr, "phxfs-bench: %s\n", r.error.c_str());
                rc = 1;
                break;
            }
            if (o.verify && !r.verified) {
                std::fprintf(stderr,
                             "phxfs-bench: verify failed: first mismatch at file offset "
                             "%llu\n",
                             static_cast<unsigned long long>(*r.mismatch));
                rc = 1;
                break;
            }
        }
    } catch (const std::exception &e) {
        std::fprintf(stderr, "phxfs-bench: %s\n", e.what());
        rc = 1;
    }
    if (created && !o.keep)
        ::unlink(o.file.c_str());
    return rc;
}

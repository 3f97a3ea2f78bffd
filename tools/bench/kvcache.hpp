// kvcache.hpp - phxfs-bench -I kvcache: an inference server's KV cache
// moving between a block store and a block pool in device memory.
//
// The model's shape (--kv-layers, --kv-heads, --kv-head-dim,
// --kv-dtype-bytes, --kv-block-tokens) gives a block: K and V of every layer
// for block_tokens tokens, layer_bytes per layer. The store holds
// --kv-store-blocks blocks, a block's layers contiguous ([block][layer]), in
// chunks of --kv-chunk-blocks blocks: runs of one file (--kv-layout file), or
// a file each in the directory -f names (--kv-layout chunks, as LMCache keeps
// 256-token chunks). Byte o of the store holds the pattern of o whichever
// file holds it, so any transfer can be checked on its own.
//
// A request restores a prefix of --kv-blocks blocks: it takes one of
// --kv-prefixes prefixes (uniformly, or Zipf-popular: prefix r with weight
// 1/(r+1)^s), each a run of chunks in a seeded order of the store's chunks
// (prefixes start evenly spread over it, so neighbours share chunks), and N
// distinct slots of the
// thread's pool at random; then every layer of every block moves to its slot
// (--kv-unit layer: a transfer of layer_bytes per block and layer, layer by
// layer, into a [layer][slot] pool as vLLM's per-layer caches are; --kv-unit
// block: one of block_bytes per block into a [slot] pool), through one phxfs
// batch per request or per layer (--kv-submit), or cuFile's batch API
// (-x cufile). --kv-op store moves the same pieces the other way.
#pragma once

#include "options.hpp"
#include "run.hpp"

#include <string>
#include <vector>

namespace phxbench {

// Makes the store that -f names exist and hold the pattern: creates what is
// missing (a file, or the directory and its chunk files); with o.verify,
// what exists must hold the pattern at its start. Returns the paths this
// call created, children before their directory (removed at exit unless
// --keep).
std::vector<std::string> prepare_kv_store(const Options &o);

// One timed run of o.kv.requests requests per thread (or -T seconds), after
// one untimed warm-up request per thread. ops and latency are per request;
// threads[t].blocks counts the blocks moved.
RunResult run_kvcache(const Options &o);

// "restore 512 blocks of 2 MiB (32 layers x 64 KiB) per request, ..."
std::string kv_describe(const Options &o);

} // namespace phxbench

// Session counters: written by the worker with relaxed atomics, read lock-free
// from any thread (Python's stats() never waits for the worker).
//
// MTPSTREAM_STATS_FIELDS is the one list of them: it declares the atomics, the
// snapshot, its Python bindings (with kStatsFields, bound as STATS_FIELDS) and,
// through that, the MTPStats fields Python fills and the server's /metrics series.
// A new counter is one line here (plus MTPStats' field and the .pyi entry, which
// tests/test_stats_fields.py checks against this list).
#pragma once

#include <atomic>
#include <cstdint>
#include <mutex>

namespace mtpstream {

// X(name, type, kind, metric, help)
//   kind: counter (only grows), gauge (a current value) or time (microseconds of a
//   phase, only grows; MTPStats.timing_us.<name without t_ and _us>);
//   metric: the /metrics series (prefixed with mtpstream_).
#define MTPSTREAM_STATS_FIELDS(X)                                                                                   \
    X(tokens_emitted, uint64_t, counter, "tokens_total", "Tokens generated.")                                       \
    X(prompt_tokens, uint64_t, counter, "prompt_tokens_total", "Prompt tokens of every call.")                      \
    X(drafts_generated, uint64_t, counter, "drafts_generated_total", "Draft tokens the MTP head proposed.")          \
    X(drafts_accepted, uint64_t, counter, "drafts_accepted_total", "Draft tokens the target accepted.")             \
    X(iters, uint64_t, counter, "iterations_total", "Decode iterations, one per sequence per round.")               \
    X(prompt_tokens_cached, uint64_t, counter, "prompt_tokens_cached_total",                                        \
      "Prompt tokens reused from a sequence's memory (prompt cache).")                                              \
    X(checkpoints, uint64_t, gauge, "checkpoints", "Prompt-cache checkpoints held now.")                            \
    X(checkpoint_bytes, uint64_t, gauge, "checkpoint_bytes", "Bytes the prompt-cache checkpoints take.")            \
    X(rollback_fallbacks, uint64_t, counter, "rollback_fallbacks_total",                                            \
      "Rollbacks that rebuilt a sequence's memory from its tokens.")                                                \
    X(replayed_tokens, uint64_t, counter, "replayed_tokens_total",                                                  \
      "rollback=replay: accepted tokens decoded a second time.")                                                    \
    X(context_switches, uint64_t, counter, "context_switches_total",                                                \
      "n_draft=auto: moves between the snapshot and the snapshot-free target context.")                             \
    X(rejection_iters, uint64_t, counter, "rejection_iterations_total",                                             \
      "verify=rejection: iterations whose drafts were sampled and verified by rejection sampling.")                 \
    X(rejection_drafts, uint64_t, counter, "rejection_drafts_generated_total",                                      \
      "verify=rejection: drafts sampled from the head's distribution.")                                             \
    X(rejection_accepted, uint64_t, counter, "rejection_drafts_accepted_total",                                     \
      "verify=rejection: sampled drafts the target kept.")                                                          \
    X(verify_fallbacks, uint64_t, counter, "verify_fallbacks_total",                                                \
      "Calls that asked for verify=rejection at temperature > 0 and ran match (a grammar or penalties).")           \
    X(t_draft_us, uint64_t, time, "draft_microseconds_total", "Time spent drafting.")                               \
    X(t_verify_us, uint64_t, time, "verify_microseconds_total", "Time spent in verify decodes.")                    \
    X(t_sample_us, uint64_t, time, "sample_microseconds_total", "Time spent sampling and emitting.")                \
    X(t_ckpt_us, uint64_t, time, "ckpt_microseconds_total", "Time spent rolling back and switching contexts.")      \
    X(t_prefill_us, uint64_t, time, "prefill_microseconds_total", "Time spent reading prompts.")                    \
    X(t_total_us, uint64_t, time, "total_microseconds_total", "Decode-phase wall time (prompts excluded).")         \
    X(n_draft, int32_t, gauge, "n_draft", "Draft length in use (changes under n_draft=auto).")

struct SessionStats {
    // iters, drafts_generated and drafts_accepted (and the rejection_ ones) change together (add_round) and are
    // read together (snapshot), so a snapshot never shows more accepted than generated
    mutable std::mutex round_mutex;
#define MTPSTREAM_STATS_ATOMIC(name, type, kind, metric, help) std::atomic<type> name{0};
    MTPSTREAM_STATS_FIELDS(MTPSTREAM_STATS_ATOMIC)
#undef MTPSTREAM_STATS_ATOMIC

    static void add(std::atomic<uint64_t> & counter, uint64_t v) {
        counter.fetch_add(v, std::memory_order_relaxed);
    }
    static void sub(std::atomic<uint64_t> & counter, uint64_t v) {
        counter.fetch_sub(v, std::memory_order_relaxed);
    }
    void add_round(uint64_t generated, uint64_t accepted, bool rejection) {
        std::lock_guard<std::mutex> lock(round_mutex);
        add(iters, 1);
        add(drafts_generated, generated);
        add(drafts_accepted, accepted);
        if (rejection) {
            add(rejection_iters, 1);
            add(rejection_drafts, generated);
            add(rejection_accepted, accepted);
        }
    }
};

struct StatsSnapshot {
#define MTPSTREAM_STATS_VALUE(name, type, kind, metric, help) type name = 0;
    MTPSTREAM_STATS_FIELDS(MTPSTREAM_STATS_VALUE)
#undef MTPSTREAM_STATS_VALUE
};

inline StatsSnapshot snapshot(const SessionStats & s) {
    std::lock_guard<std::mutex> lock(s.round_mutex);
    StatsSnapshot out;
#define MTPSTREAM_STATS_LOAD(name, type, kind, metric, help) out.name = s.name.load(std::memory_order_relaxed);
    MTPSTREAM_STATS_FIELDS(MTPSTREAM_STATS_LOAD)
#undef MTPSTREAM_STATS_LOAD
    return out;
}

// The list as data: what the bindings export as STATS_FIELDS.
struct StatsField {
    const char * name;
    const char * kind;
    const char * metric;
    const char * help;
};

inline constexpr StatsField kStatsFields[] = {
#define MTPSTREAM_STATS_DESCRIBE(name, type, kind, metric, help) {#name, #kind, metric, help},
    MTPSTREAM_STATS_FIELDS(MTPSTREAM_STATS_DESCRIBE)
#undef MTPSTREAM_STATS_DESCRIBE
};

}  // namespace mtpstream

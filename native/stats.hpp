// Session counters: written by the worker with relaxed atomics, read lock-free
// from any thread (Python's stats() never waits for the worker).
#pragma once

#include <atomic>
#include <cstdint>
#include <mutex>

namespace mtpstream {

struct SessionStats {
    // iters, drafts_generated and drafts_accepted change together (add_round) and are
    // read together (snapshot), so a snapshot never shows more accepted than generated
    mutable std::mutex round_mutex;
    std::atomic<uint64_t> iters{0};
    std::atomic<uint64_t> drafts_generated{0};
    std::atomic<uint64_t> drafts_accepted{0};
    std::atomic<uint64_t> tokens_emitted{0};
    std::atomic<uint64_t> prompt_tokens{0};
    std::atomic<uint64_t> prompt_tokens_cached{0};
    std::atomic<uint64_t> checkpoints{0};       // prompt-cache checkpoints held now
    std::atomic<uint64_t> checkpoint_bytes{0};  // and the bytes they take
    std::atomic<uint64_t> rollback_fallbacks{0};
    std::atomic<uint64_t> context_switches{0};  // "auto": moves between target contexts
    std::atomic<uint64_t> replayed_tokens{0};   // Rollback::replay: tokens decoded again
    std::atomic<uint64_t> t_draft_us{0};
    std::atomic<uint64_t> t_verify_us{0};
    std::atomic<uint64_t> t_sample_us{0};
    std::atomic<uint64_t> t_ckpt_us{0};
    std::atomic<uint64_t> t_prefill_us{0};
    std::atomic<uint64_t> t_total_us{0};  // decode phase wall time (excludes prefill)
    std::atomic<int32_t> n_draft{0};       // draft length in use (changes under "auto")

    static void add(std::atomic<uint64_t> & counter, uint64_t v) {
        counter.fetch_add(v, std::memory_order_relaxed);
    }
    static void sub(std::atomic<uint64_t> & counter, uint64_t v) {
        counter.fetch_sub(v, std::memory_order_relaxed);
    }
    void add_round(uint64_t generated, uint64_t accepted) {
        std::lock_guard<std::mutex> lock(round_mutex);
        add(iters, 1);
        add(drafts_generated, generated);
        add(drafts_accepted, accepted);
    }
};

struct StatsSnapshot {
    uint64_t iters, drafts_generated, drafts_accepted, tokens_emitted, prompt_tokens,
        rollback_fallbacks, context_switches, replayed_tokens;
    uint64_t prompt_tokens_cached, checkpoints, checkpoint_bytes;
    uint64_t t_draft_us, t_verify_us, t_sample_us, t_ckpt_us, t_prefill_us, t_total_us;
    int32_t n_draft;
};

inline StatsSnapshot snapshot(const SessionStats & s) {
    auto ld = [](const std::atomic<uint64_t> & a) { return a.load(std::memory_order_relaxed); };
    std::lock_guard<std::mutex> lock(s.round_mutex);
    StatsSnapshot out{};
    out.iters = ld(s.iters);
    out.drafts_generated = ld(s.drafts_generated);
    out.drafts_accepted = ld(s.drafts_accepted);
    out.tokens_emitted = ld(s.tokens_emitted);
    out.prompt_tokens = ld(s.prompt_tokens);
    out.rollback_fallbacks = ld(s.rollback_fallbacks);
    out.context_switches = ld(s.context_switches);
    out.replayed_tokens = ld(s.replayed_tokens);
    out.prompt_tokens_cached = ld(s.prompt_tokens_cached);
    out.checkpoints = ld(s.checkpoints);
    out.checkpoint_bytes = ld(s.checkpoint_bytes);
    out.t_draft_us = ld(s.t_draft_us);
    out.t_verify_us = ld(s.t_verify_us);
    out.t_sample_us = ld(s.t_sample_us);
    out.t_ckpt_us = ld(s.t_ckpt_us);
    out.t_prefill_us = ld(s.t_prefill_us);
    out.t_total_us = ld(s.t_total_us);
    out.n_draft = s.n_draft.load(std::memory_order_relaxed);
    return out;
}

}  // namespace mtpstream

#include "rollback_choice.hpp"

#include <algorithm>
#include <vector>

#include "batch.hpp"
#include "clock.hpp"
#include "llama_handles.hpp"

namespace mtpstream {

namespace {

constexpr int timed_runs = 5;

// A scratch context for n_seq verify batches of per_seq tokens.
ContextPtr scratch_context(llama_model * model, llama_context_params cp, int32_t n_seq, int32_t per_seq,
                           uint32_t n_rs_seq) {
    cp.n_seq_max = static_cast<uint32_t>(n_seq);
    cp.n_ctx = static_cast<uint32_t>(n_seq) * static_cast<uint32_t>(std::max(per_seq, 16));
    cp.n_batch = static_cast<uint32_t>(n_seq * per_seq);
    cp.n_ubatch = cp.n_batch;
    cp.kv_unified = true;
    cp.n_rs_seq = n_rs_seq;
    cp.abort_callback = nullptr;
    cp.abort_callback_data = nullptr;
    return ContextPtr(llama_init_from_model(model, cp));
}

// Median time of decodes of per_seq tokens in each of n_seq sequences from position
// 0 (the memory cleared first). rebuild: every other decode leaves one row per
// sequence without output, so no decode can reuse the previous one's graph (what a
// replayed verify does); otherwise every decode has one shape and reuses it.
double time_verifies(llama_context * ctx, int32_t n_seq, int32_t per_seq, bool rebuild) {
    Batch batch(n_seq * per_seq, 0);
    std::vector<double> times;
    for (int run = 0; run <= timed_runs; ++run) {
        llama_memory_clear(llama_get_memory(ctx), true);
        batch.clear();
        const bool fewer_outputs = rebuild && run % 2 == 1;
        for (int32_t s = 0; s < n_seq; ++s) {
            for (int32_t i = 0; i < per_seq; ++i) {
                batch.add(1 + i, i, s, !(fewer_outputs && i == 0));
            }
        }
        const int64_t t0 = now_us();
        if (llama_decode(ctx, batch.view(false)) != 0) {
            return -1.0;
        }
        if (run > 0) {  // the first builds the graph and allocates its buffers
            times.push_back(static_cast<double>(elapsed(t0)));
        }
    }
    std::sort(times.begin(), times.end());
    return times[times.size() / 2];
}

}  // namespace

RollbackChoice choose_rollback(llama_model * model, llama_context_params base, int32_t n_seq, int32_t n_draft) {
    RollbackChoice choice;
    if (n_seq <= 1 || n_draft <= 0) {
        return choice;  // snapshots
    }
    const int32_t per_seq = n_draft + 1;
    double snapshots_us = -1.0;
    double replay_us = -1.0;
    {
        ContextPtr ctx = scratch_context(model, base, n_seq, per_seq, static_cast<uint32_t>(n_draft));
        if (ctx) {
            snapshots_us = time_verifies(ctx.get(), n_seq, per_seq, false);
        }
    }
    {
        ContextPtr ctx = scratch_context(model, base, n_seq, per_seq, 0);
        if (ctx) {
            replay_us = time_verifies(ctx.get(), n_seq, per_seq, true);
        }
    }
    if (snapshots_us <= 0.0 || replay_us <= 0.0) {
        return choice;
    }
    choice.verify_cost_ratio = replay_us / snapshots_us;
    choice.replay = choice.verify_cost_ratio < replay_below;
    return choice;
}

}  // namespace mtpstream

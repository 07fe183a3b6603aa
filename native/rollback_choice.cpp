#include "rollback_choice.hpp"

#include <algorithm>

#include "batch.hpp"
#include "clock.hpp"
#include "llama_handles.hpp"

namespace mtpstream {

namespace {

constexpr int timed_runs = 5;
// A verify slower than this costs its arithmetic: a graph rebuild (a few ms on a
// CPU) cannot matter beside it, while the snapshot writes grow with it.
constexpr double compute_bound_us = 100e3;

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

// One decode of per_seq tokens in each of n_seq sequences from position 0 (the
// memory cleared first); its time in us, or -1 if it failed. fewer_outputs: the
// first row of every sequence has no output (a replayed verify's shape).
double time_verify(llama_context * ctx, Batch & batch, int32_t n_seq, int32_t per_seq, bool fewer_outputs) {
    llama_memory_clear(llama_get_memory(ctx), true);
    batch.clear();
    for (int32_t s = 0; s < n_seq; ++s) {
        for (int32_t i = 0; i < per_seq; ++i) {
            batch.add(1 + i, i, s, !(fewer_outputs && i == 0));
        }
    }
    const int64_t t0 = now_us();
    if (llama_decode(ctx, batch.view(false)) != 0) {
        return -1.0;
    }
    return static_cast<double>(elapsed(t0));
}

}  // namespace

RollbackChoice choose_rollback(llama_model * model, llama_context_params base, int32_t n_seq, int32_t n_draft) {
    RollbackChoice choice;
    if (n_seq <= 1 || n_draft <= 0) {
        return choice;  // snapshots
    }
    const int32_t per_seq = n_draft + 1;
    ContextPtr snap = scratch_context(model, base, n_seq, per_seq, static_cast<uint32_t>(n_draft));
    ContextPtr plain = scratch_context(model, base, n_seq, per_seq, 0);
    if (!snap || !plain) {
        return choice;
    }
    Batch batch(n_seq * per_seq, 0);
    // interleaved, fastest of a few (a busy machine only ever adds time): the
    // snapshot verify with its graph reused; the plain one alternating its shape, so
    // every decode rebuilds the graph, as replayed verifies do. The first of each
    // builds its graph and buffers and is not counted.
    double snapshots_us = 0.0;
    double replay_us = 0.0;
    for (int run = 0; run <= timed_runs; ++run) {
        const double s_us = time_verify(snap.get(), batch, n_seq, per_seq, false);
        const double r_us = time_verify(plain.get(), batch, n_seq, per_seq, run % 2 == 1);
        if (s_us < 0.0 || r_us < 0.0) {
            return choice;
        }
        if (run == 1 || (run > 1 && s_us < snapshots_us)) {
            snapshots_us = s_us;
        }
        if (run == 1 || (run > 1 && r_us < replay_us)) {
            replay_us = r_us;
        }
        if (run == 1 && std::min(s_us, r_us) > compute_bound_us) {
            break;  // compute-bound: more decodes would only slow init down
        }
    }
    choice.verify_cost_ratio = replay_us / snapshots_us;
    choice.replay = choice.verify_cost_ratio < replay_below;
    return choice;
}

}  // namespace mtpstream

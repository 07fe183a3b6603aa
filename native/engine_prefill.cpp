// Prompt processing: a new call claims a sequence, then reads its prompt one
// n_batch chunk per step (so cancellation and the other sequences get a turn
// between chunks), feeding the target and the MTP draft context. Also the other
// catch-up decodes of a sequence: the draft context's pending pairs, the tokens
// Rollback::replay left to decode again, and a memory rebuilt from the history.
#include <algorithm>
#include <cstring>

#include "clock.hpp"
#include "engine.hpp"
#include "job.hpp"
#include "llama_staging.h"

namespace mtpstream {

void Engine::begin(Job & job) {
    Generation & g = job.generation();
    if (!pool_->claim(g)) {
        // the runtime never runs more than n_seq jobs of a session at once
        fail(job, "no free sequence slot (internal error)");
        return;
    }
    if (plain_) {
        // a reused state lives on the main target context
        plain_->begin(g.cached == 0);
    }
    g.sampler->reset();
    if (g.sampler->verify_fell_back()) {
        SessionStats::add(stats_.verify_fallbacks, 1);
    }
    g.t_start_us = now_us();
    SessionStats::add(stats_.prompt_tokens, g.opts.prompt.size());
    if (g.cached == 0) {
        std::fill(g.feed.carry.begin(), g.feed.carry.end(), 0.0f);
        return;
    }
    // the prompt extends the sequence's memory: read only the new tokens, after the
    // MTP context has caught up on the pairs the last call left
    SessionStats::add(stats_.prompt_tokens_cached, static_cast<uint64_t>(g.cached));
    g.prefill_pos = static_cast<size_t>(g.cached);
    if (ctx_dft_ && g.feed.size() > 0 && !flush_pending(job)) {
        if (job.cancel_requested()) {
            finish_cancelled(job);
        } else {
            fail(job, "llama_decode failed on the draft context");
        }
        return;
    }
    if (pool_->checkpoint_position(g) == g.cached) {
        pool_->take_checkpoint(g, live());
    }
}

bool Engine::prefill_tokens(Job & job, const llama_token * tokens, int32_t n, int32_t pos0, bool want_logits,
                            bool defer_draft) {
    Generation & g = job.generation();
    for (int32_t off = 0; off < n; off += n_batch_) {
        const int32_t m = std::min(n_batch_, n - off);
        batch_tgt_->clear();
        for (int32_t i = 0; i < m; ++i) {
            batch_tgt_->add(tokens[off + i], pos0 + off + i, g.seq, want_logits && off + i == n - 1);
        }
        if (decode(live(), *batch_tgt_, false, {&job}) != 0) {
            return false;
        }
        if (!ctx_dft_) {
            continue;
        }
        const float * rows = llama_get_embeddings_nextn(live());
        if (rows == nullptr) {
            return false;
        }
        if (defer_draft) {
            // keep the (token, hidden row) pairs; the draft context catches up on
            // them in the first decode round, after the first token is out
            g.feed.add_decoded(tokens + off, m, pos0 + off, rows);
            continue;
        }
        batch_dft_->clear();
        for (int32_t i = 0; i < m; ++i) {
            const float * row = i == 0 ? g.feed.carry.data() : rows + static_cast<size_t>(i - 1) * n_embd_;
            batch_dft_->add(tokens[off + i], pos0 + off + i, g.seq, false, row);
        }
        if (decode(ctx_dft_.get(), *batch_dft_, true, {&job}) != 0) {
            return false;
        }
        g.feed.set_carry(rows + static_cast<size_t>(m - 1) * n_embd_);
    }
    return true;
}

void Engine::prefill_step(Job & job) {
    Generation & g = job.generation();
    const auto n_prompt = static_cast<int32_t>(g.opts.prompt.size());
    const int64_t t0 = now_us();
    const int32_t pos = static_cast<int32_t>(g.prefill_pos);
    const int32_t at = pool_->checkpoint_position(g);
    int32_t m = std::min(n_batch_, n_prompt - pos);
    if (pos < at && at < pos + m) {
        m = at - pos;  // the chunk ends at the checkpoint
    }
    const bool last_chunk = pos + m == n_prompt;
    // the last chunk's draft-context work waits until the first token is out
    // (time to first token stays that of plain decoding)
    const bool ok = prefill_tokens(job, g.opts.prompt.data() + pos, m, pos, last_chunk, last_chunk);
    SessionStats::add(stats_.t_prefill_us, elapsed(t0));
    if (!ok) {
        if (job.cancel_requested()) {
            finish_cancelled(job);
        } else {
            fail(job, "llama_decode failed while processing the prompt");
        }
        return;
    }
    g.prefill_pos += static_cast<size_t>(m);
    if (!last_chunk) {
        if (static_cast<int32_t>(g.prefill_pos) == at || pool_->boundary_checkpoint(g)) {
            pool_->take_checkpoint(g, live());
        }
        return;
    }
    const int64_t ts = now_us();
    llama_token first = -1;
    std::string error;
    g.logprobs.clear();
    const bool sampled = sample(g, live(), m - 1, first, error);
    SessionStats::add(stats_.t_sample_us, elapsed(ts));
    if (!sampled) {
        fail(job, error);
        return;
    }
    g.history = g.opts.prompt;
    g.n_past = n_prompt;
    g.last = first;
    if (g.feed.size() == 0) {
        g.feed.pos = n_prompt;
    }
    g.phase = Generation::Phase::decode;
    bool ended = false;
    emit_token(job, first, ended, 0);
}

// Feed the (token, hidden row) pairs the MTP context has not seen yet.
bool Engine::flush_pending(Job & job) {
    Generation & g = job.generation();
    return flush_feed(g.feed, g.seq, *batch_dft_,
                      [&](Batch & b) { return decode(ctx_dft_.get(), b, true, {&job}); });
}

// Rollback::replay: the tokens a rejection left to replay, at their positions, into
// the target batch (no outputs).
void Engine::add_replay(Generation & g) {
    const auto n = static_cast<int32_t>(g.replay.size());
    for (int32_t i = 0; i < n; ++i) {
        batch_tgt_->add(g.replay[static_cast<size_t>(i)], g.n_past - n + i, g.seq, false);
    }
    SessionStats::add(stats_.replayed_tokens, static_cast<uint64_t>(n));
}

// Decode them on their own (before the memory is kept for the next call).
bool Engine::flush_replay(Job & job) {
    Generation & g = job.generation();
    if (g.replay.empty()) {
        return true;
    }
    batch_tgt_->clear();
    add_replay(g);
    if (decode(ctx_tgt_.get(), *batch_tgt_, false, {&job}) != 0) {
        return false;
    }
    g.replay.clear();
    return true;
}

// Read the sequence's whole history again into cleared memory (a rollback or a
// context move that failed). False: the memory is lost, checkpoints included.
bool Engine::rebuild_memory(Job & job) {
    Generation & g = job.generation();
    if (plain_) {
        plain_->deactivate();  // the plain context is cleared whenever the sequence moves there
    }
    pool_->clear_seq(g.seq);
    g.replay.clear();
    g.feed.restart(g.n_past, static_cast<size_t>(n_embd_));
    if (prefill_tokens(job, g.history.data(), g.n_past, 0, false, false)) {
        return true;
    }
    // (aborted by a cancel, or failed): a checkpoint's attention KV is gone too
    pool_->drop_checkpoints(g.seq);
    return false;
}

}  // namespace mtpstream

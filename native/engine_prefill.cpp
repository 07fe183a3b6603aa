// Prompt processing: a new call claims a sequence, then reads its prompt one
// n_batch chunk per step (so cancellation and the other sequences get a turn
// between chunks), feeding the target and the MTP draft context.
#include <algorithm>
#include <cstring>

#include "clock.hpp"
#include "engine.hpp"
#include "job.hpp"
#include "llama_staging.h"

namespace mtpstream {

void Engine::begin(Job & job) {
    Generation & g = job.generation();
    if (!claim_seq(g)) {
        // the runtime never runs more than n_seq jobs of a session at once
        finish(job, EventKind::error, "", -1, "no free sequence slot (internal error)");
        return;
    }
    if (plain_) {
        // a reused state lives on the main target context
        plain_->begin(g.cached == 0);
    }
    llama_sampler_reset(g.sampler.get());
    if (g.grammar) {
        llama_sampler_reset(g.grammar.get());
    }
    g.t_start_us = now_us();
    SessionStats::add(stats_.prompt_tokens, g.opts.prompt.size());
    if (g.cached == 0) {
        std::fill(g.carry.begin(), g.carry.end(), 0.0f);
        return;
    }
    // the prompt extends the sequence's memory: read only the new tokens, after the
    // MTP context has caught up on the pairs the last call left
    SessionStats::add(stats_.prompt_tokens_cached, static_cast<uint64_t>(g.cached));
    g.prefill_pos = static_cast<size_t>(g.cached);
    if (ctx_dft_ && !g.pending_tok.empty() && !flush_pending(g)) {
        finish(job, EventKind::error, "", -1, "llama_decode failed on the draft context");
        return;
    }
    if (checkpoint_position(g) == g.cached) {
        take_checkpoint(g);
    }
}

bool Engine::prefill_tokens(Generation & g, const llama_token * tokens, int32_t n, int32_t pos0,
                            bool want_logits, bool defer_draft) {
    for (int32_t off = 0; off < n; off += n_batch_) {
        const int32_t m = std::min(n_batch_, n - off);
        batch_tgt_->clear();
        for (int32_t i = 0; i < m; ++i) {
            batch_tgt_->add(tokens[off + i], pos0 + off + i, g.seq, want_logits && off + i == n - 1);
        }
        if (llama_decode(live(), batch_tgt_->view(false)) != 0) {
            return false;
        }
        if (!ctx_dft_) {
            continue;
        }
        const float * rows = llama_get_embeddings_nextn(live());
        if (rows == nullptr) {
            return false;
        }
        const auto row = [&](int32_t i) {
            return i == 0 ? g.carry.data() : rows + static_cast<size_t>(i - 1) * n_embd_;
        };
        if (defer_draft) {
            // keep the (token, hidden row) pairs; the draft context catches up on
            // them in the first decode round, after the first token is out
            if (g.pending_tok.empty()) {
                g.pending_pos = pos0 + off;
            }
            for (int32_t i = 0; i < m; ++i) {
                g.pending_tok.push_back(tokens[off + i]);
                g.pending_h.insert(g.pending_h.end(), row(i), row(i) + n_embd_);
            }
        } else {
            batch_dft_->clear();
            for (int32_t i = 0; i < m; ++i) {
                batch_dft_->add(tokens[off + i], pos0 + off + i, g.seq, false, row(i));
            }
            if (llama_decode(ctx_dft_.get(), batch_dft_->view(true)) != 0) {
                return false;
            }
        }
        std::memcpy(g.carry.data(), rows + static_cast<size_t>(m - 1) * n_embd_,
                    static_cast<size_t>(n_embd_) * sizeof(float));
    }
    return true;
}

void Engine::prefill_step(Job & job) {
    Generation & g = job.generation();
    const auto n_prompt = static_cast<int32_t>(g.opts.prompt.size());
    const int64_t t0 = now_us();
    const int32_t pos = static_cast<int32_t>(g.prefill_pos);
    const int32_t at = checkpoint_position(g);
    int32_t m = std::min(n_batch_, n_prompt - pos);
    if (pos < at && at < pos + m) {
        m = at - pos;  // the chunk ends at the checkpoint
    }
    const bool last_chunk = pos + m == n_prompt;
    // the last chunk's draft-context work waits until the first token is out
    // (time to first token stays that of plain decoding)
    abort_flags_.assign(1, &job.cancel_flag());
    const bool ok = prefill_tokens(g, g.opts.prompt.data() + pos, m, pos, last_chunk, last_chunk);
    abort_flags_.clear();
    SessionStats::add(stats_.t_prefill_us, elapsed(t0));
    if (!ok) {
        if (job.cancel_requested()) {
            finish_cancelled(job);
        } else {
            finish(job, EventKind::error, "", -1, "llama_decode failed while processing the prompt");
        }
        return;
    }
    g.prefill_pos += static_cast<size_t>(m);
    if (!last_chunk) {
        if (static_cast<int32_t>(g.prefill_pos) == at || boundary_checkpoint(g)) {
            take_checkpoint(g);
        }
        return;
    }
    const int64_t ts = now_us();
    llama_token first = -1;
    std::string error;
    const bool sampled = sample(g, live(), m - 1, first, error);
    SessionStats::add(stats_.t_sample_us, elapsed(ts));
    if (!sampled) {
        finish(job, EventKind::error, "", -1, error);
        return;
    }
    g.history = g.opts.prompt;
    g.n_past = n_prompt;
    g.last = first;
    if (g.pending_tok.empty()) {
        g.pending_pos = n_prompt;
    }
    g.phase = Generation::Phase::decode;
    bool ended = false;
    emit_token(job, first, ended);
}

bool Engine::flush_pending(Generation & g) {
    const auto n = static_cast<int32_t>(g.pending_tok.size());
    for (int32_t off = 0; off < n; off += n_batch_) {
        const int32_t m = std::min(n_batch_, n - off);
        batch_dft_->clear();
        for (int32_t i = 0; i < m; ++i) {
            batch_dft_->add(g.pending_tok[static_cast<size_t>(off + i)], g.pending_pos + off + i, g.seq, false,
                            &g.pending_h[static_cast<size_t>(off + i) * n_embd_]);
        }
        if (llama_decode(ctx_dft_.get(), batch_dft_->view(true)) != 0) {
            return false;
        }
    }
    g.pending_pos += n;
    g.pending_tok.clear();
    g.pending_h.clear();
    return true;
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
bool Engine::flush_replay(Generation & g) {
    if (g.replay.empty()) {
        return true;
    }
    batch_tgt_->clear();
    add_replay(g);
    if (llama_decode(ctx_tgt_.get(), batch_tgt_->view(false)) != 0) {
        return false;
    }
    g.replay.clear();
    return true;
}

bool Engine::rebuild_memory(Generation & g) {
    if (plain_) {
        plain_->deactivate();  // the plain context is cleared whenever the sequence moves there
    }
    clear_seq(g.seq);
    g.replay.clear();
    std::fill(g.carry.begin(), g.carry.end(), 0.0f);
    g.pending_tok.clear();
    g.pending_h.clear();
    g.pending_pos = g.n_past;
    return prefill_tokens(g, g.history.data(), g.n_past, 0, false, false);
}

}  // namespace mtpstream

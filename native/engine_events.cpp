// What the engine tells a job: its tokens (with stop strings, max_tokens and
// periodic stats events) and the one terminal event that ends it, which also
// hands the job's sequence back to the pool with what the next call may reuse.
#include <string>

#include "engine.hpp"
#include "job.hpp"
#include "llama_staging.h"

namespace mtpstream {

void Engine::emit_token(Job & job, llama_token tok, bool & ended, size_t sampled) {
    Generation & g = job.generation();
    if (target_->is_eog(tok)) {
        finish(job, EventKind::eog, "", tok);
        ended = true;
        return;
    }
    Event ev;
    ev.kind = EventKind::token;
    ev.token = tok;
    ev.text = g.text.push(target_->token_to_piece(tok));
    if (sampled < g.logprobs.size()) {
        ev.logprobs = std::move(g.logprobs[sampled]);
        for (TokenProb & p : ev.logprobs) {
            p.piece = target_->token_to_piece(p.token, true);
        }
    }
    g.emitted += 1;
    SessionStats::add(stats_.tokens_emitted, 1);
    job.push(std::move(ev));
    if (g.text.stopped()) {
        finish(job, EventKind::done, "stop", -1);
        ended = true;
        return;
    }
    if (g.opts.emit_stats_every > 0 && g.emitted % g.opts.emit_stats_every == 0) {
        Event st;
        st.kind = EventKind::stats;
        job.push(std::move(st));
    }
    if (g.emitted >= g.opts.max_tokens) {
        finish(job, EventKind::done, "length", -1);
        ended = true;
    }
}

Usage Engine::usage(const Generation & g) const {
    Usage u;
    u.prompt_tokens = static_cast<int32_t>(g.opts.prompt.size());
    u.completion_tokens = g.emitted;
    u.drafts_generated = g.drafts;
    u.drafts_accepted = g.accepted;
    u.cached_tokens = g.cached;
    return u;
}

void Engine::finish(Job & job, EventKind kind, const std::string & reason, llama_token tok,
                    const std::string & error, ErrorCode error_code) {
    Generation & g = job.generation();
    if (g.phase == Generation::Phase::finished) {
        return;
    }
    Event ev;
    ev.kind = kind;
    ev.token = tok;
    ev.finish_reason = reason;
    ev.error = error;
    ev.error_code = kind == EventKind::error ? error_code : ErrorCode::ok;
    if (kind == EventKind::done || kind == EventKind::eog) {
        ev.text = g.text.flush();
        ev.stop = g.text.matched();
    }
    ev.usage = usage(g);
    // the sequence is free for the next call at once; a clean end keeps its state for
    // a call that extends it (the prompt cache)
    const bool clean = (kind == EventKind::done || kind == EventKind::eog) && g.phase == Generation::Phase::decode;
    g.phase = Generation::Phase::finished;
    release_seq(job, clean ? Keep::everything : kind == EventKind::cancelled ? Keep::checkpoints : Keep::nothing);
    job.push(std::move(ev));  // terminal: marks the job finished
}

void Engine::fail(Job & job, const std::string & message) {
    // once an RPC worker is lost, every failure is that loss (a decode on stand-in data)
    const std::string loss = worker_loss();
    finish(job, EventKind::error, "", -1, loss.empty() ? message : loss,
           loss.empty() ? ErrorCode::generation : ErrorCode::worker_lost);
}

void Engine::fail_decode(Job & job, int32_t rc, const char * which) {
    // 2 = aborted by the abort callback, i.e. the job was cancelled
    if (rc == 2 || job.cancel_requested()) {
        finish_cancelled(job);
    } else {
        fail(job, std::string("llama_decode failed on the ") + which + " context (code " + std::to_string(rc) + ")");
    }
}

void Engine::finish_cancelled(Job & job) { finish(job, EventKind::cancelled, "cancelled", -1); }

void Engine::end_rebuilt(Job & job, const char * message) {
    if (job.cancel_requested()) {
        finish_cancelled(job);
    } else {
        fail(job, message);
    }
}

void Engine::release_seq(Job & job, Keep keep) {
    Generation & g = job.generation();
    if (g.seq < 0) {
        return;
    }
    if (replay_) {  // a verify that ended the call (aborted, failed) left its backup
        llama_memory_seq_rm(llama_get_memory(ctx_tgt_.get()), backup_of(g.seq), -1, -1);
    }
    bool on_plain = plain_ && plain_->active();  // the plain context is cleared at every call
    if (on_plain && keep != Keep::nothing && pool_->caching(g) && plain_->move(ctx_tgt_.get(), false)) {
        // "auto" ended the call on the snapshot-free context: bring the state back
        // (checkpoints are restored into the main context)
        SessionStats::add(stats_.context_switches, 1);
        on_plain = false;
    }
    if (keep == Keep::everything && pool_->caching(g) && !flush_replay(job)) {
        keep = Keep::checkpoints;  // the memory is stale past them
    }
    pool_->release(g, on_plain ? Keep::nothing : keep);
}

}  // namespace mtpstream

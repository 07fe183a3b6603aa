// One decode round over the session's decoding sequences ("lanes"):
//   plan     each lane's draft length (fixed, or its own "auto" controller);
//   draft    draft step j of every drafting lane in one MTP-context decode (the
//            first step also feeds each lane's accepted tokens, the catch-up);
//   verify   [last, d1..dk] of every lane in one target decode (split only where
//            n_batch forces it);
//   accept   per lane: verify the drafts at its own output rows, in order (match:
//            sample the target, keep a draft if equal; rejection: see sampler.hpp);
//   rollback per lane: drop rejected positions (recurrent models: llama.cpp's
//            per-sequence snapshots, or with Rollback::replay the state from before
//            the verify and the accepted tokens to decode again), carry the hidden
//            row of the last accepted one;
//   emit     per lane: tokens, stop strings, max_tokens.
// A lane that fails (grammar dead end, a failed rollback) ends alone; a failed
// shared decode ends the lanes that were in it.
#include <algorithm>
#include <cstring>

#include "clock.hpp"
#include "engine.hpp"
#include "job.hpp"
#include "llama_staging.h"

namespace mtpstream {

namespace {

template <typename Pred>
std::vector<Lane *> select(std::vector<Lane> & lanes, Pred pred) {
    std::vector<Lane *> out;
    for (Lane & lane : lanes) {
        if (!lane.ended && pred(lane)) {
            out.push_back(&lane);
        }
    }
    return out;
}

std::vector<Job *> jobs_of(const std::vector<Lane *> & lanes) {
    std::vector<Job *> jobs;
    jobs.reserve(lanes.size());
    for (const Lane * lane : lanes) {
        jobs.push_back(lane->job);
    }
    return jobs;
}

}  // namespace

void Engine::decode_round(std::vector<Lane> & lanes) {
    const int64_t t_begin = now_us();
    if (ctx_dft_ && applied_fault_ != fault_.load()) {
        apply_row_mode();
    }
    for (Lane & lane : lanes) {
        lane.ended = !plan_lane(lane);
    }
    draft_phase(lanes);
    verify_phase(lanes);
    SessionStats::add(stats_.t_total_us, elapsed(t_begin));
}

// The lane's draft length this round; false if the generation ended here.
bool Engine::plan_lane(Lane & lane) {
    Generation & g = *lane.g;
    const int32_t remaining = g.opts.max_tokens - g.emitted;
    const int32_t room = n_ctx_ - g.n_past;  // free positions from n_past on
    if (room <= 0 || remaining <= 0) {
        finish(*lane.job, EventKind::done, "length", -1);
        return false;
    }
    lane.k_max = g.auto_draft ? g.auto_draft->choose() : n_draft_;
    // a lane replaying r tokens drafts r fewer, so every lane's verify stays
    // n_draft + 1 tokens (llama.cpp splits a recurrent batch of unequal sequences)
    const auto replaying = static_cast<int32_t>(g.replay.size());
    lane.k = ctx_dft_ ? std::max(std::min({lane.k_max, remaining - 1, room - 1, n_draft_ - replaying}), 0) : 0;
    if (g.auto_draft) {
        stats_.n_draft.store(lane.k_max, std::memory_order_relaxed);
    }
    return move_for_auto(lane);
}

// "auto" on one sequence: two iterations in a row without drafts move it to the
// snapshot-free context; any draft (a probe included) moves it back first.
bool Engine::move_for_auto(Lane & lane) {
    if (!plain_) {
        return true;
    }
    const bool want = plain_->want_plain(lane.k);
    if (want == plain_->active()) {
        return true;
    }
    lane.switched = true;
    const int64_t t0 = now_us();
    // failing to move to the plain context just keeps decoding where we are;
    // failing to move back rebuilds the target context from the token history
    const bool moved = plain_->move(ctx_tgt_.get(), want);
    bool ok = moved || want;
    if (moved) {
        SessionStats::add(stats_.context_switches, 1);
    } else if (!ok) {
        SessionStats::add(stats_.rollback_fallbacks, 1);
        ok = rebuild_memory(*lane.job);
    }
    SessionStats::add(stats_.t_ckpt_us, elapsed(t0));
    if (!ok) {
        end_rebuilt(*lane.job, "could not move the sequence back to the target context");
    }
    return ok;
}

// Keep every lane's catch-up within one draft batch: a lane whose pending pairs
// would not fit beside its draft token (or, together, the lanes' pairs would
// overflow n_batch) feeds them to the MTP context on its own first.
bool Engine::draft_catch_up(std::vector<Lane> & lanes) {
    std::vector<Lane *> speculating = select(lanes, [](const Lane &) { return true; });
    auto need = [&](const Lane * l) { return static_cast<int64_t>(l->g->feed.size()) + 1; };
    int64_t total = 0;
    for (Lane * lane : speculating) {
        if (lane->g->feed.size() + n_draft_ + 2 > n_batch_ && !flush_pending(*lane->job)) {
            fail_lanes({lane}, -1, "draft");
            return false;
        }
        total += lane->k > 0 ? need(lane) : 0;
    }
    while (total > n_batch_) {
        Lane * largest = nullptr;
        for (Lane * lane : speculating) {
            if (lane->k > 0 && (!largest || need(lane) > need(largest))) {
                largest = lane;
            }
        }
        if (largest == nullptr || need(largest) <= 1) {
            break;  // nothing left to flush (n_batch >= n_seq * (n_draft + 1) is checked at creation)
        }
        total -= need(largest) - 1;
        if (!flush_pending(*largest->job)) {
            fail_lanes({largest}, -1, "draft");
            return false;
        }
    }
    return true;
}

void Engine::draft_phase(std::vector<Lane> & lanes) {
    if (!ctx_dft_) {
        return;
    }
    const int64_t t0 = now_us();
    if (!draft_catch_up(lanes)) {
        SessionStats::add(stats_.t_draft_us, elapsed(t0));
        return;
    }
    std::vector<Lane *> drafting = select(lanes, [](const Lane & l) { return l.k > 0; });
    if (drafting.size() == 1) {
        set_draft_argmax(!drafting[0]->g->sampler->rejection());
    }
    std::vector<ChainLane *> chain;
    for (Lane * lane : drafting) {
        Generation & g = *lane->g;
        ChainLane & c = lane->chain;
        c.feed = &g.feed;
        c.seq = g.seq;
        c.last = g.last;
        c.n_past = g.n_past;
        c.k = lane->k;
        const bool rejection = g.sampler->rejection();
        if (rejection && g.draft_q.size() < static_cast<size_t>(lane->k)) {
            g.draft_q.resize(static_cast<size_t>(lane->k));
        }
        c.sampler = rejection ? g.sampler.get() : nullptr;
        c.q = rejection ? &g.draft_q : nullptr;
        c.on_device = draft_on_device_ && !rejection;
        chain.push_back(&c);
    }
    const bool skip_feed = fault_.load() == Fault::skip_draft_catch_up;  // tests only
    const int32_t rc = run_draft_chain(ctx_dft_.get(), *batch_dft_, n_vocab_, chain, skip_feed,
                                       [&](Batch & b) { return decode(ctx_dft_.get(), b, true, jobs_of(drafting)); });
    for (Lane * lane : drafting) {
        if (lane->chain.state == ChainLane::State::decode_failed) {
            fail_lanes({lane}, rc, "draft");
        } else if (lane->chain.state == ChainLane::State::failed) {
            fail(*lane->job, lane->chain.error);
            lane->ended = true;
        }
    }
    const uint64_t t_draft = elapsed(t0);
    SessionStats::add(stats_.t_draft_us, t_draft);
    for (Lane * lane : drafting) {
        lane->t_draft_us = static_cast<double>(t_draft);
    }
}

// The verify batches: lanes in order, as many per target decode as n_batch holds.
// With recurrent-state snapshots every decode holds lanes of one length only:
// llama.cpp splits a batch of unequal sequences into several ubatches, and a
// sequence spread over two ubatches is not rolled back exactly by its snapshots
// (wrong tokens with several calls in flight, issue 18).
void Engine::verify_phase(std::vector<Lane> & lanes) {
    const bool by_length = target_recurrent_ && !replay_;
    auto need = [](const Lane & lane) { return static_cast<int32_t>(lane.g->replay.size()) + lane.k + 1; };
    std::vector<int32_t> lengths;
    for (const Lane & lane : lanes) {
        if (!lane.ended && (lengths.empty() || by_length)) {
            lengths.push_back(need(lane));
        }
    }
    std::sort(lengths.begin(), lengths.end());
    lengths.erase(std::unique(lengths.begin(), lengths.end()), lengths.end());
    for (const int32_t length : lengths) {
        std::vector<Lane *> group;
        int32_t used = 0;
        for (Lane & lane : lanes) {
            if (lane.ended || (by_length && need(lane) != length)) {
                continue;
            }
            if (!group.empty() && used + need(lane) > n_batch_) {
                verify_group(group);
                group.clear();
                used = 0;
            }
            group.push_back(&lane);
            used += need(lane);
        }
        if (!group.empty()) {
            verify_group(group);
        }
    }
}

void Engine::verify_group(std::vector<Lane *> & group) {
    llama_context * tgt = live();
    const int64_t t_v = now_us();
    batch_tgt_->clear();
    for (Lane * lane : group) {
        Generation & g = *lane->g;
        if (replay_ && lane->k > 0) {
            // the backup (empty: dropped after every rollback and at release) shares
            // the state until this decode writes the sequence's own
            llama_memory_seq_cp(llama_get_memory(tgt), g.seq, backup_of(g.seq), -1, -1);
        }
        add_replay(g);
        lane->verify_idx = batch_tgt_->add(g.last, g.n_past, g.seq, true);
        for (int32_t j = 0; j < lane->k; ++j) {
            batch_tgt_->add(lane->chain.drafts[static_cast<size_t>(j)], g.n_past + 1 + j, g.seq, true);
        }
    }
    const int32_t rc = decode(tgt, *batch_tgt_, false, jobs_of(group));
    const uint64_t t_verify = elapsed(t_v);
    SessionStats::add(stats_.t_verify_us, t_verify);
    if (rc != 0) {
        fail_lanes(group, rc, "target");
        return;
    }
    // every lane reads its outputs before any lane may decode again (a rollback
    // fallback re-prefills, which would overwrite them)
    const int64_t t_s = now_us();
    for (Lane * lane : group) {
        lane->ended = !accept_lane(*lane);
        if (!lane->ended && lane->g->auto_draft) {
            // with several sequences these are the costs of the shared batches the
            // lane was part of, which is what its drafts add to the round
            lane->g->auto_draft->observe(lane->k, lane->n_acc, lane->t_draft_us, static_cast<double>(t_verify),
                                         !lane->switched);
        }
    }
    SessionStats::add(stats_.t_sample_us, elapsed(t_s));
    const int64_t t_c = now_us();
    for (Lane * lane : group) {
        if (!lane->ended) {
            lane->ended = !rollback_lane(*lane);
        }
    }
    SessionStats::add(stats_.t_ckpt_us, elapsed(t_c));
    const int64_t t_e = now_us();
    for (Lane * lane : group) {
        if (!lane->ended) {
            emit_lane(*lane);
        }
    }
    SessionStats::add(stats_.t_sample_us, elapsed(t_e));
}

// Verify the lane's drafts against the target's rows (engine_verify.cpp), count the
// accepted ones and take the hidden rows the MTP context needs (the accepted
// tokens' pairs and the carry).
bool Engine::accept_lane(Lane & lane) {
    Generation & g = *lane.g;
    llama_context * tgt = live();
    const int32_t k = lane.k;
    lane.out.clear();
    g.logprobs.clear();
    lane.n_acc = 0;
    std::string error;
    const bool rejection = g.sampler->rejection();
    if (!(rejection ? verify_rejection(lane, tgt, error) : verify_match(lane, tgt, error))) {
        fail(*lane.job, error);
        return false;
    }
    const int32_t n_acc = lane.n_acc;
    stats_.add_round(static_cast<uint64_t>(k), static_cast<uint64_t>(n_acc), rejection);
    g.drafts += k;
    g.accepted += n_acc;
    if (!ctx_dft_) {
        return true;
    }
    // pairs for the MTP context: (token at p, target row at p - 1); the target's
    // rows of the verify entries are consecutive (unmasked)
    const float * rows = llama_get_embeddings_nextn_ith(tgt, lane.verify_idx);
    if (rows == nullptr || llama_get_embeddings_nextn_ith(tgt, lane.verify_idx + n_acc) == nullptr) {
        fail(*lane.job, "the target exported no hidden row");
        return false;
    }
    g.feed.add_verified(g.last, lane.chain.drafts.data(), n_acc, k > 0, rows);
    return true;
}

// Drop the rejected positions from the target's memory and advance the sequence.
bool Engine::rollback_lane(Lane & lane) {
    Generation & g = *lane.g;
    bool rebuild = false;
    if (replay_) {
        rebuild = !replay_rollback(lane);
    } else if (lane.n_acc < lane.k) {
        rebuild = !llama_memory_seq_rm(llama_get_memory(live()), g.seq, g.n_past + lane.n_acc + 1, -1);
    }
    g.history.push_back(g.last);
    for (int32_t j = 0; j < lane.n_acc; ++j) {
        g.history.push_back(lane.chain.drafts[static_cast<size_t>(j)]);
    }
    g.n_past += lane.n_acc + 1;
    g.last = lane.out.back();
    if (!rebuild) {
        return true;
    }
    SessionStats::add(stats_.rollback_fallbacks, 1);
    if (!rebuild_memory(*lane.job)) {
        end_rebuilt(*lane.job, "could not rebuild the context after a failed rollback");
        return false;
    }
    return true;
}

// Rollback::replay: after a rejection the sequence goes back to its backup (the
// state before this verify) and the tokens it accepted, with the replayed ones it
// was verified after, wait to be decoded in front of the next verify.
bool Engine::replay_rollback(Lane & lane) {
    Generation & g = *lane.g;
    llama_memory_t mem = llama_get_memory(ctx_tgt_.get());
    if (lane.k == 0) {  // nothing could be rejected: no backup was taken
        g.replay.clear();
        return true;
    }
    bool ok = true;
    if (lane.n_acc < lane.k) {
        ok = llama_memory_seq_rm(mem, g.seq, -1, -1);
        llama_memory_seq_cp(mem, backup_of(g.seq), g.seq, -1, -1);
        g.replay.push_back(g.last);
        g.replay.insert(g.replay.end(), lane.chain.drafts.begin(), lane.chain.drafts.begin() + lane.n_acc);
    } else {
        g.replay.clear();
    }
    llama_memory_seq_rm(mem, backup_of(g.seq), -1, -1);
    return ok;
}

void Engine::emit_lane(Lane & lane) {
    bool ended = false;
    for (size_t i = 0; i < lane.out.size() && !ended; ++i) {
        emit_token(*lane.job, lane.out[i], ended, i);
    }
    lane.ended = ended;
}

void Engine::fail_lanes(const std::vector<Lane *> & lanes, int32_t rc, const char * which) {
    for (Lane * lane : lanes) {
        fail_decode(*lane->job, rc, which);
        lane->ended = true;
    }
}

}  // namespace mtpstream

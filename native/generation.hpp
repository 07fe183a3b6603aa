// The per-request state the engine advances one step at a time on the worker:
// one sequence of the session's batch (its own seq id, sampler chain, grammar,
// stop strings, "auto" draft state and hidden-row carry).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "auto_draft.hpp"
#include "draft_feed.hpp"
#include "events.hpp"
#include "llama.h"
#include "options.hpp"
#include "sampler.hpp"
#include "text_stream.hpp"

namespace mtpstream {

struct Generation {
    enum class Phase { prefill, decode, finished };

    GenerationOptions opts;
    std::unique_ptr<Sampler> sampler;  // the grammar (if any) and the chain
    TextStream text;
    Phase phase = Phase::prefill;
    std::size_t prefill_pos = 0;
    // the sequence id this generation holds in the session's contexts (-1: none yet)
    llama_seq_id seq = -1;
    // n_draft="auto": this sequence's own draft-length controller
    std::unique_ptr<AutoDraft> auto_draft;

    // decode state: `last` is the newest token, not yet in the target's memory,
    // at position n_past; feed.carry is the target's hidden row at n_past - 1, and
    // feed holds the (token, hidden row) pairs the draft context has not seen yet.
    llama_token last = -1;
    int32_t n_past = 0;
    DraftFeed feed;
    // Rollback::replay: the tokens at positions n_past - replay.size() .. n_past - 1,
    // which the target's memory does not hold (a rejection restored the state from
    // before them); the next verify decodes them first
    std::vector<llama_token> replay;
    // verify="rejection": the distribution each draft of the current round was drawn
    // from (kept here so that their storage is reused round after round)
    std::vector<TokenDist> draft_q;
    // tokens at positions 0..n_past-1 (to rebuild memory if a rollback fails)
    std::vector<llama_token> history;
    // with opts.n_logprobs >= 0: the log-probabilities of the tokens sampled since
    // the last emit, in order (cleared before each batch of samples)
    std::vector<std::vector<TokenProb>> logprobs;

    int32_t cached = 0;  // prompt tokens reused from the sequence's memory
    int32_t emitted = 0;
    int32_t drafts = 0;
    int32_t accepted = 0;
    int64_t t_start_us = 0;
};

}  // namespace mtpstream

// Log-probabilities of the target's own distribution at one output row: the
// log-softmax of the raw logits (before logit bias, penalties, grammar,
// temperature and truncation, as llama-server reports them by default), for the
// token that was emitted and for the n most likely tokens. Computed only for calls
// that ask for them (GenerationOptions::n_logprobs >= 0).
#pragma once

#include <cstdint>
#include <vector>

#include "events.hpp"
#include "llama.h"

namespace mtpstream {

// The most top alternatives a call may ask for (OpenAI's top_logprobs limit).
constexpr int32_t kMaxTopLogprobs = 20;

// `out` becomes [chosen, top 1..n_top] (most likely first, the lower id first on a
// tie), each with its log-probability under the softmax of `logits`; pieces are
// left empty (the engine fills them).
void token_logprobs(const float * logits, int32_t n_vocab, llama_token chosen, int32_t n_top,
                    std::vector<TokenProb> & out);

}  // namespace mtpstream

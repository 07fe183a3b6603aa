// A call's sampler: llama.cpp's sampler chain (logit bias, penalties, truncation,
// greedy or dist) and, when the call has one, its GBNF grammar, applied first and checked
// for a live token (with no token left, the dist sampler would abort inside
// llama.cpp). It also gives access to a decode's logits and to the candidates
// built from them, which is what sampled drafts and per-token probabilities need.
// One sampler per call, used on the worker thread only (built on the caller's).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "llama.h"
#include "options.hpp"
#include "status.hpp"

namespace mtpstream {

struct SamplerDeleter {
    void operator()(llama_sampler * s) const { llama_sampler_free(s); }
};
using SamplerPtr = std::unique_ptr<llama_sampler, SamplerDeleter>;

class Sampler {
public:
    // Null, with `status` set, when the grammar does not parse (the message carries
    // llama.cpp's parse error, which it prints to stderr: captured here).
    static std::unique_ptr<Sampler> create(const SamplingOptions & opts, const llama_vocab * vocab, int32_t n_vocab,
                                           Status & status);

    bool has_grammar() const { return grammar_ != nullptr; }
    // A new call on this sampler: the chain's and the grammar's state from scratch.
    void reset();
    // Sample the output at batch index idx of ctx's last decode and accept it into
    // the grammar and the chain. False, with `error` set, when the grammar admits no
    // token (`n_generated`, the tokens generated so far, goes into the message), a
    // grammar step ran over the call's grammar_step_budget_us, or nothing could be
    // selected.
    bool sample(llama_context * ctx, int32_t idx, int32_t n_generated, llama_token & out, std::string & error);

    // The logits of batch index idx of ctx's last decode (null if it has none).
    static const float * logits(llama_context * ctx, int32_t idx) { return llama_get_logits_ith(ctx, idx); }
    // The candidates of a row of logits, in token order, unsorted (valid until the
    // next call on this sampler).
    llama_token_data_array candidates(const float * logits);

private:
    Sampler(SamplerPtr chain, SamplerPtr grammar, int32_t n_vocab, int64_t step_budget_us)
        : chain_(std::move(chain)), grammar_(std::move(grammar)), n_vocab_(n_vocab), step_budget_us_(step_budget_us) {}

    // A grammar step (apply over the vocabulary, or accept) over the call's budget
    // (CPU time) sets grammar_error_: llama.cpp's grammar code cannot be interrupted,
    // so the step is measured once it returns, and every later sample fails instead
    // of paying the next, likely costlier, step.
    bool over_budget(int64_t since, const char * what, std::string & error);

    SamplerPtr chain_;
    SamplerPtr grammar_;  // null without a grammar
    int32_t n_vocab_;
    int64_t step_budget_us_ = 0;  // 0: none
    std::string grammar_error_;
    std::vector<llama_token_data> cand_;
};

// The most likely token of a row of logits (the lowest id on a tie): a greedy draft.
llama_token greedy_token(const float * logits, int32_t n_vocab);

}  // namespace mtpstream

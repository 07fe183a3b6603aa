// A call's sampler: llama.cpp's sampler chain (logit bias, penalties, truncation,
// greedy or dist) and, when the call has one, its GBNF grammar, applied first and checked
// for a live token (with no token left, the dist sampler would abort inside
// llama.cpp). It also gives access to a decode's logits and to the candidates
// built from them, which is what sampled drafts and per-token probabilities need.
//
// With verify="rejection" (speculative sampling, Leviathan et al. 2023 / Chen et
// al. 2023) it also draws the call's drafts from the MTP head's distribution q
// after the same transforms the chain applies to the target (top-k, top-p, min-p,
// temperature), keeps a draft d with probability min(1, p(d)/q(d)) against the
// target's distribution p at its position, and resamples the first rejected
// position from norm(max(0, p - q)); each emitted token is then distributed as
// plain sampling from p. Rejection runs only where p and q are comparable: at
// temperature 0 it is the greedy path; a grammar or repetition/frequency/presence
// penalties (stateful, applied to the target only) make the call fall back to
// match (verify_fell_back()).
// One sampler per call, used on the worker thread only (built on the caller's).
#pragma once

#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "grammar_build.hpp"
#include "grammar_host.hpp"
#include "llama.h"
#include "options.hpp"
#include "status.hpp"

namespace mtpstream {

// A sparse distribution over the vocabulary: the tokens a call's transforms leave,
// with their probabilities in .p (summing to 1), in no particular order.
using TokenDist = std::vector<llama_token_data>;

class Sampler {
public:
    // Null, with `status` set, when the grammar does not parse (the message carries
    // llama.cpp's parse error, which it prints to stderr: captured here). With a
    // grammar host, the grammar is built here only to check it: its steps run in the
    // host, on a copy the first sample() opens there.
    static std::unique_ptr<Sampler> create(const SamplingOptions & opts, const llama_vocab * vocab, int32_t n_vocab,
                                           std::shared_ptr<GrammarHost> host, Status & status);
    ~Sampler();
    Sampler(const Sampler &) = delete;
    Sampler & operator=(const Sampler &) = delete;

    bool has_grammar() const { return grammar_ != nullptr || host_ != nullptr; }
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

    // --- speculative sampling (verify="rejection")
    // True when this call verifies by rejection sampling (asked for, temp > 0, no
    // grammar, no penalties).
    bool rejection() const { return transform_ != nullptr; }
    // True when the call asked for verify="rejection" at temp > 0 and runs "match"
    // because of a grammar or penalties.
    bool verify_fell_back() const { return fell_back_; }
    // The distribution of a row of logits after the chain's transforms (top-k,
    // top-p, min-p, temperature), as the chain's dist sampler would draw from it.
    // Empty when no token has a finite logit.
    void distribution(const float * logits, TokenDist & out);
    // A draft drawn from the head's row of logits; `q` receives its distribution.
    // -1 when the row has no finite logit.
    llama_token draft_token(const float * logits, TokenDist & q);
    // Keep draft d (drawn from q) with probability min(1, p(d) / q(d)).
    bool accept_draft(llama_token d, const TokenDist & p, const TokenDist & q);
    // The token of a rejected position: drawn from norm(max(0, p - q)), or from p
    // where that has no mass left (p == q up to rounding).
    llama_token residual_token(const TokenDist & p, const TokenDist & q);
    // A token drawn from `dist` (weights need not be normalized).
    llama_token draw(const TokenDist & dist);
    // Record a token the call emitted by rejection sampling in the chain's state.
    void accept(llama_token t) { llama_sampler_accept(chain_.get(), t); }

private:
    Sampler(SamplerPtr chain, SamplerPtr grammar, int32_t n_vocab, int64_t step_budget_us, bool argmax)
        : chain_(std::move(chain)),
          grammar_(std::move(grammar)),
          n_vocab_(n_vocab),
          step_budget_us_(step_budget_us),
          argmax_(argmax && grammar_ == nullptr) {}

    // A grammar step (apply over the vocabulary, or accept) over the call's budget
    // (CPU time) sets grammar_error_: llama.cpp's grammar code cannot be interrupted,
    // so the step is measured once it returns, and every later sample fails instead
    // of paying the next, likely costlier, step. (In the grammar host, a step that
    // does not return within its deadline is ended by killing the host.)
    bool over_budget(int64_t took_us, const char * what, std::string & error);
    // The grammar's step over `arr` (in token order), in process or in the host.
    bool apply_grammar(llama_token_data_array & arr, std::string & error);
    // Accept `token` into the grammar (see sampler.cpp for a lazy grammar's throw).
    bool accept_grammar(llama_token token, std::string & error);
    bool accept_local(llama_token token, std::string & error);
    bool accept_remote(llama_token token, std::string & error);
    bool fail_grammar(const std::string & why, std::string & error);
    // The wall-clock limit of one step in the host (<= 0: none).
    int64_t host_deadline_us() const;

    SamplerPtr chain_;
    SamplerPtr grammar_;  // null without a grammar, or when the grammar host runs it
    // the grammar host, when it runs this call's grammar (null once a lazy grammar gave up)
    std::shared_ptr<GrammarHost> host_;
    GrammarSpec spec_;
    uint32_t remote_ = 0;  // the grammar's id in the host; 0: not opened yet
    std::string mask_;     // the host's allowed tokens, a bit per token
    bool lazy_ = false;   // the grammar waits for a trigger word (SamplingOptions::grammar_triggers)
    int32_t n_vocab_;
    // the chain is llama.cpp's greedy sampler alone (temperature 0, no penalties) and
    // there is no grammar: the token is the logits' argmax (first of equals, as the
    // greedy sampler picks it), read without building the candidate array
    bool argmax_;
    int64_t step_budget_us_ = 0;  // 0: none
    // verify="rejection": the chain's transforms without its final draw (null: match)
    void enable_rejection(const SamplingOptions & opts);
    void reseed();

    std::string grammar_error_;
    std::vector<llama_token_data> cand_;
    // verify="rejection" only
    SamplerPtr transform_;
    bool fell_back_ = false;
    uint32_t seed_ = 0;
    std::mt19937 rng_;
    std::vector<float> dense_;  // q by token id while a residual is computed (zero otherwise)
    TokenDist residual_;
};

// The most likely token of a row of logits (the lowest id on a tie): a greedy draft.
llama_token greedy_token(const float * logits, int32_t n_vocab);

}  // namespace mtpstream

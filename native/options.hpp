// Plain option structs handed from the bindings to the engine. Python validates
// every field (pydantic) before anything reaches here; the engine re-checks the
// few limits whose violation would abort inside llama.cpp.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "llama.h"

namespace mtpstream {

// How a recurrent (or hybrid) target drops the rejected drafts of a verify batch.
enum class Rollback : int32_t {
    // llama.cpp keeps the state after each of the last n_draft + 1 tokens of every
    // verify batch (n_rs_seq); a rejection selects one. Costs the snapshot writes in
    // every verify.
    snapshots,
    // no snapshots: before a verify the sequence's state is shared with a spare
    // sequence id (copy-on-write, free until written); a rejection restores it and
    // the accepted tokens are decoded again in front of the next verify, in place
    // of as many drafts. Cheaper verifies, paid for at every rejection.
    replay,
    // one of the two per session, from the measured cost of its decodes (see
    // rollback_choice.hpp)
    automatic,
};

struct ContextOptions {
    int32_t n_ctx = 2048;         // per sequence
    int32_t n_seq = 1;            // sequences decoded together (1..64)
    // 0: min(n_ctx * n_seq, max(512, n_seq * (n_draft + 1))), as Engine::check_sizes fills it in
    int32_t n_batch = 0;
    int32_t n_ubatch = 0;         // 0: n_batch
    int32_t n_threads = 0;        // 0: llama.cpp default
    int32_t n_threads_batch = 0;  // 0: llama.cpp default
    int32_t flash_attn = -1;      // -1 auto, 0 off, 1 on
    int32_t type_k = -1;          // ggml_type, -1: default
    int32_t type_v = -1;
    int32_t offload_kqv = -1;     // -1 default, 0 off, 1 on
    bool prompt_cache = true;     // keep each sequence's state for a call that extends it
    // bytes the prompt cache's checkpoints (see sequence_pool.hpp) may take, all sequences together
    int64_t checkpoint_bytes = 256ll << 20;
    Rollback rollback = Rollback::automatic;  // recurrent/hybrid targets only
    // the grammar host's command line (executable, model path, memory cap in bytes;
    // see grammar_host.hpp); empty: grammars run on the worker thread
    std::vector<std::string> grammar_host;
};

// How a call's drafts are verified (see sampler.hpp).
enum class Verify : int32_t {
    // greedy drafts; the target samples its own token and a draft is kept if equal
    match,
    // speculative sampling: drafts sampled from the head's distribution q, each kept
    // with probability min(1, p/q), the first rejected one resampled from
    // norm(max(0, p - q)); temp 0, a grammar or penalties fall back to match
    rejection,
};

struct SamplingOptions {
    float temp = 0.0f;
    int32_t top_k = 0;
    float top_p = 1.0f;
    float min_p = 0.0f;
    uint32_t seed = LLAMA_DEFAULT_SEED;
    int32_t penalty_last_n = 64;
    float penalty_repeat = 1.0f;
    float penalty_freq = 0.0f;
    float penalty_present = 0.0f;
    // added to the logits before anything else samples (llama.cpp's logit-bias sampler)
    std::vector<std::pair<llama_token, float>> logit_bias;
    std::string grammar;  // GBNF; empty: none
    // a lazy grammar: it applies once the output contains one of these words (from
    // the word on); empty: from the first token. A word that is one token of the
    // vocabulary (e.g. a special <tool_call>) triggers on that token.
    std::vector<std::string> grammar_triggers;
    int64_t grammar_step_budget_us = 0;  // a grammar apply/accept taking longer ends the call; 0: none
    Verify verify = Verify::match;
};

struct GenerationOptions {
    std::vector<llama_token> prompt;
    int32_t max_tokens = 256;
    SamplingOptions sampling;
    std::vector<std::string> stop;
    int32_t emit_stats_every = 0;  // 0: never
    bool cache_prompt = true;      // reuse a cached prefix, and leave this call's state to reuse
    // -1: no logprobs; n >= 0: every token event carries the emitted token's
    // log-probability under the target and its n most likely alternatives
    int32_t n_logprobs = -1;
    // a prompt position to keep a prompt-cache checkpoint at besides the usual ones (a
    // chat's: where the generation prompt starts, which the next turn shares even when
    // its template drops this turn's reasoning); -1: none
    int32_t checkpoint_hint = -1;
};

}  // namespace mtpstream

#include "sampler.hpp"

#include "clock.hpp"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <mutex>
#include <random>

namespace mtpstream {

namespace {

bool has_penalties(const SamplingOptions & s) {
    return s.penalty_repeat != 1.0f || s.penalty_freq != 0.0f || s.penalty_present != 0.0f;
}

// The transforms of a sampled call, in the chain's order: top-k, top-p, min-p, temperature.
void add_transforms(llama_sampler * chain, const SamplingOptions & s) {
    if (s.top_k > 0) {
        llama_sampler_chain_add(chain, llama_sampler_init_top_k(s.top_k));
    }
    if (s.top_p < 1.0f) {
        llama_sampler_chain_add(chain, llama_sampler_init_top_p(s.top_p, 1));
    }
    if (s.min_p > 0.0f) {
        llama_sampler_chain_add(chain, llama_sampler_init_min_p(s.min_p, 1));
    }
    llama_sampler_chain_add(chain, llama_sampler_init_temp(s.temp));
}

SamplerPtr make_chain(const SamplingOptions & s, int32_t n_vocab) {
    SamplerPtr chain(llama_sampler_chain_init(llama_sampler_chain_default_params()));
    if (!s.logit_bias.empty()) {
        std::vector<llama_logit_bias> bias;
        bias.reserve(s.logit_bias.size());
        for (const auto & [token, value] : s.logit_bias) {
            bias.push_back(llama_logit_bias{token, value});
        }
        llama_sampler_chain_add(chain.get(), llama_sampler_init_logit_bias(n_vocab, static_cast<int32_t>(bias.size()),
                                                                           bias.data()));
    }
    if (has_penalties(s)) {
        llama_sampler_chain_add(chain.get(), llama_sampler_init_penalties(n_vocab, s.penalty_last_n, s.penalty_repeat,
                                                                          s.penalty_freq, s.penalty_present));
    }
    if (s.temp <= 0.0f) {
        llama_sampler_chain_add(chain.get(), llama_sampler_init_greedy());
        return chain;
    }
    add_transforms(chain.get(), s);
    llama_sampler_chain_add(chain.get(), llama_sampler_init_dist(s.seed));
    return chain;
}

// The chain make_chain builds for these options is the greedy sampler alone.
bool is_argmax(const SamplingOptions & s) {
    return s.temp <= 0.0f && !has_penalties(s) && s.logit_bias.empty();
}

// The probability of token t in a sparse distribution (0 when absent).
float prob_of(const TokenDist & dist, llama_token t) {
    for (const llama_token_data & d : dist) {
        if (d.id == t) {
            return d.p;
        }
    }
    return 0.0f;
}

// Softmax over the logits in place (.p), as llama.cpp's dist sampler computes it;
// false when no logit is finite.
bool softmax(TokenDist & dist) {
    float max_l = -INFINITY;
    for (const llama_token_data & d : dist) {
        max_l = std::max(max_l, d.logit);
    }
    if (!std::isfinite(max_l)) {
        return false;
    }
    double sum = 0.0;
    for (llama_token_data & d : dist) {
        d.p = std::exp(d.logit - max_l);
        sum += d.p;
    }
    for (llama_token_data & d : dist) {
        d.p = static_cast<float>(d.p / sum);
    }
    return true;
}

}  // namespace

std::unique_ptr<Sampler> Sampler::create(const SamplingOptions & opts, const llama_vocab * vocab, int32_t n_vocab,
                                         std::shared_ptr<GrammarHost> host, Status & status) {
    SamplerPtr grammar;
    GrammarSpec spec{opts.grammar, opts.grammar_triggers};
    if (!opts.grammar.empty()) {
        std::string detail;
        grammar = build_grammar(spec, vocab, detail);
        if (!grammar) {
            status = Status::error(ErrorCode::invalid_argument,
                                   "grammar could not be parsed (GBNF with a 'root' rule expected)" +
                                       (detail.empty() ? std::string() : ": " + detail),
                                   "grammar");
            return nullptr;
        }
    }
    std::unique_ptr<Sampler> sampler(
        new Sampler(make_chain(opts, n_vocab), std::move(grammar), n_vocab, opts.grammar_step_budget_us, is_argmax(opts)));
    sampler->lazy_ = spec.lazy();
    if (sampler->grammar_ && host) {
        sampler->grammar_.reset();  // checked: the host runs it from here on
        sampler->host_ = std::move(host);
        sampler->spec_ = std::move(spec);
    }
    sampler->enable_rejection(opts);
    return sampler;
}

Sampler::~Sampler() {
    if (host_) {
        host_->release(remote_);
    }
}

int64_t Sampler::host_deadline_us() const {
    // the budget is CPU time, measured when a step returns; past this much wall time
    // the step is taken not to return at all
    return step_budget_us_ > 0 ? 3 * step_budget_us_ + 2'000'000 : 0;
}

void Sampler::enable_rejection(const SamplingOptions & opts) {
    if (opts.verify != Verify::rejection || opts.temp <= 0.0f) {
        return;  // at temperature 0 rejection sampling is the greedy path itself
    }
    if (has_grammar() || has_penalties(opts) || !opts.logit_bias.empty()) {
        fell_back_ = true;  // p (penalized, biased, masked) and the head's q would not be comparable
        return;
    }
    transform_.reset(llama_sampler_chain_init(llama_sampler_chain_default_params()));
    add_transforms(transform_.get(), opts);
    // a stream of its own: seeded like the chain's dist sampler, its draws would
    // repeat the ones that chose the call's first token
    seed_ = opts.seed == LLAMA_DEFAULT_SEED ? std::random_device{}() : opts.seed;
    dense_.assign(static_cast<size_t>(n_vocab_), 0.0f);
    reseed();
}

void Sampler::reseed() {
    std::seed_seq seq{seed_, 0x72656a65u};  // "reje": not the chain's stream
    rng_.seed(seq);
}

void Sampler::reset() {
    if (transform_) {
        reseed();
    }
    grammar_error_.clear();
    llama_sampler_reset(chain_.get());
    if (grammar_) {
        llama_sampler_reset(grammar_.get());
    }
    if (host_) {
        host_->release(remote_);  // the next sample opens a fresh copy
        remote_ = 0;
    }
}

llama_token_data_array Sampler::candidates(const float * logits) {
    cand_.resize(static_cast<size_t>(n_vocab_));
    for (llama_token t = 0; t < n_vocab_; ++t) {
        cand_[static_cast<size_t>(t)] = llama_token_data{t, logits[t], 0.0f};
    }
    return llama_token_data_array{cand_.data(), cand_.size(), -1, false};
}

bool Sampler::sample(llama_context * ctx, int32_t idx, int32_t n_generated, llama_token & out, std::string & error) {
    if (argmax_) {
        const float * row = logits(ctx, idx);
        if (row == nullptr) {
            error = "the target produced no logits";
            return false;
        }
        out = greedy_token(row, n_vocab_);
        return true;
    }
    if (!has_grammar()) {
        out = llama_sampler_sample(chain_.get(), ctx, idx);
        return true;
    }
    // llama_sampler_sample, with the grammar applied on its own first
    if (!grammar_error_.empty()) {
        error = grammar_error_;
        return false;
    }
    const float * row = logits(ctx, idx);
    if (row == nullptr) {
        error = "the target produced no logits";
        return false;
    }
    llama_token_data_array arr = candidates(row);
    if (!apply_grammar(arr, error)) {
        return false;
    }
    const bool alive = std::any_of(arr.data, arr.data + arr.size,
                                   [](const llama_token_data & d) { return d.logit > -INFINITY; });
    if (!alive) {
        error = "the grammar admits no token after " + std::to_string(n_generated) +
                " generated tokens (no token of the vocabulary can continue it)";
        return false;
    }
    llama_sampler_apply(chain_.get(), &arr);
    if (arr.selected < 0 || arr.selected >= static_cast<int64_t>(arr.size)) {
        error = "sampling selected no token (the logits are not finite)";
        return false;
    }
    out = arr.data[arr.selected].id;
    if (!accept_grammar(out, error)) {
        return false;
    }
    llama_sampler_accept(chain_.get(), out);
    return true;
}

bool Sampler::apply_grammar(llama_token_data_array & arr, std::string & error) {
    if (!host_) {
        const int64_t t0 = thread_cpu_us();
        llama_sampler_apply(grammar_.get(), &arr);
        return !over_budget(thread_cpu_us() - t0, "applying", error);
    }
    GrammarHost::Step step;
    if (remote_ == 0) {
        remote_ = host_->open(spec_, host_deadline_us(), n_vocab_, step);
        if (remote_ == 0) {
            return fail_grammar(step.error, error);
        }
        if (over_budget(step.cpu_us, "building", error)) {
            return false;
        }
    }
    step = host_->apply(remote_, mask_);
    if (step.outcome != GrammarHost::Outcome::ok) {
        return fail_grammar(step.error, error);
    }
    if (over_budget(step.cpu_us, "applying", error)) {
        return false;
    }
    for (size_t i = 0; i < arr.size; ++i) {  // arr is in token order (candidates())
        if (((static_cast<unsigned char>(mask_[i / 8]) >> (i % 8)) & 1u) == 0) {
            arr.data[i].logit = -INFINITY;
        }
    }
    return true;
}

bool Sampler::accept_grammar(llama_token token, std::string & error) {
    return host_ ? accept_remote(token, error) : accept_local(token, error);
}

// llama.cpp throws when a lazy grammar's trigger replays text the grammar does not
// admit (the trigger came inside a token that goes on differently): the call goes on
// unconstrained, as if the trigger had not come. Any other throw ends the call.
bool Sampler::accept_local(llama_token token, std::string & error) {
    const int64_t t0 = thread_cpu_us();
    try {
        llama_sampler_accept(grammar_.get(), token);
    } catch (const std::exception & e) {
        if (lazy_) {
            grammar_.reset();
            return true;
        }
        return fail_grammar(std::string("the grammar could not accept a token it allowed: ") + e.what(), error);
    }
    return !over_budget(thread_cpu_us() - t0, "accepting a token of", error);
}

bool Sampler::accept_remote(llama_token token, std::string & error) {
    const GrammarHost::Step step = host_->accept(remote_, token);
    if (step.outcome == GrammarHost::Outcome::dropped) {
        host_.reset();  // as accept_local: the lazy grammar gave up, the call goes on unconstrained
        remote_ = 0;
        return true;
    }
    if (step.outcome != GrammarHost::Outcome::ok) {
        return fail_grammar(step.error, error);
    }
    return !over_budget(step.cpu_us, "accepting a token of", error);
}

bool Sampler::fail_grammar(const std::string & why, std::string & error) {
    grammar_error_ = why;
    error = grammar_error_;
    return false;
}

bool Sampler::over_budget(int64_t took, const char * what, std::string & error) {
    // CPU time: a loaded machine does not fail a call
    if (step_budget_us_ <= 0 || took <= step_budget_us_) {
        return false;
    }
    char text[200];
    std::snprintf(text, sizeof text,
                  "the grammar is too costly: %s it took %.3f s of CPU time, over the grammar step budget of %.3f s",
                  what, static_cast<double>(took) / 1e6, static_cast<double>(step_budget_us_) / 1e6);
    return fail_grammar(text, error);
}

void Sampler::distribution(const float * logits, TokenDist & out) {
    llama_token_data_array arr = candidates(logits);
    llama_sampler_apply(transform_.get(), &arr);
    out.assign(arr.data, arr.data + arr.size);
    if (!softmax(out)) {
        out.clear();
    }
}

llama_token Sampler::draw(const TokenDist & dist) {
    double total = 0.0;
    for (const llama_token_data & d : dist) {
        total += d.p;
    }
    const double target = std::uniform_real_distribution<double>(0.0, 1.0)(rng_) * total;
    double run = 0.0;
    for (const llama_token_data & d : dist) {
        run += d.p;
        if (run > target) {
            return d.id;
        }
    }
    return dist.empty() ? -1 : dist.back().id;
}

llama_token Sampler::draft_token(const float * logits, TokenDist & q) {
    distribution(logits, q);
    return draw(q);
}

bool Sampler::accept_draft(llama_token d, const TokenDist & p, const TokenDist & q) {
    const double pd = prob_of(p, d);
    const double qd = prob_of(q, d);
    const double u = std::uniform_real_distribution<double>(0.0, 1.0)(rng_);
    return u * qd < pd;
}

llama_token Sampler::residual_token(const TokenDist & p, const TokenDist & q) {
    for (const llama_token_data & d : q) {
        dense_[static_cast<size_t>(d.id)] = d.p;
    }
    residual_.clear();
    for (const llama_token_data & d : p) {
        const float r = d.p - dense_[static_cast<size_t>(d.id)];
        if (r > 0.0f) {
            residual_.push_back(llama_token_data{d.id, d.logit, r});
        }
    }
    for (const llama_token_data & d : q) {
        dense_[static_cast<size_t>(d.id)] = 0.0f;
    }
    return residual_.empty() ? draw(p) : draw(residual_);
}

llama_token greedy_token(const float * logits, int32_t n_vocab) {
    llama_token best = 0;
    float best_v = logits[0];
    for (int32_t i = 1; i < n_vocab; ++i) {
        if (logits[i] > best_v) {
            best_v = logits[i];
            best = i;
        }
    }
    return best;
}

}  // namespace mtpstream

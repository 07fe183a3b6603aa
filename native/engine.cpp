#include "engine.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <exception>
#include <mutex>
#include <stdexcept>

#include <unistd.h>

#include "clock.hpp"
#include "job.hpp"
#include "llama_staging.h"

namespace mtpstream {

namespace {

// llama.cpp prints a grammar's parse error with fprintf(stderr) instead of its log
// callback. This runs `fn` with file descriptor 2 pointed at a temporary file and
// returns what was written there (the user gets it in the exception instead).
template <typename Fn>
std::string capture_stderr(Fn && fn) {
    static std::mutex mutex;
    std::lock_guard<std::mutex> lock(mutex);
    std::FILE * tmp = std::tmpfile();
    const int saved = tmp != nullptr ? ::dup(2) : -1;
    if (saved < 0) {
        if (tmp != nullptr) {
            std::fclose(tmp);
        }
        fn();
        return "";
    }
    std::fflush(stderr);
    ::dup2(::fileno(tmp), 2);
    fn();
    std::fflush(stderr);
    ::dup2(saved, 2);
    ::close(saved);
    std::string out;
    std::rewind(tmp);
    char buf[4096];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, tmp)) > 0 && out.size() < 16384) {
        out.append(buf, n);
    }
    std::fclose(tmp);
    return out;
}

// The first line of llama.cpp's grammar parse error ("parse: error parsing grammar: ...").
std::string parse_error_line(const std::string & text) {
    const size_t at = text.find("error parsing grammar");
    if (at == std::string::npos) {
        return "";
    }
    const size_t end = text.find('\n', at);
    return text.substr(at, end == std::string::npos ? std::string::npos : end - at);
}

}  // namespace

// ---------------------------------------------------------------- Batch

Batch::Batch(int32_t capacity, int32_t n_embd)
    : capacity_(capacity),
      n_embd_(n_embd),
      tokens_(static_cast<size_t>(capacity)),
      hidden_(static_cast<size_t>(capacity) * static_cast<size_t>(std::max(n_embd, 0))),
      pos_(static_cast<size_t>(capacity)),
      n_seq_id_(static_cast<size_t>(capacity), 1),
      seq_id_storage_(static_cast<size_t>(capacity), 0),
      seq_id_(static_cast<size_t>(capacity)),
      logits_(static_cast<size_t>(capacity), 0) {
    for (size_t i = 0; i < seq_id_.size(); ++i) {
        seq_id_[i] = &seq_id_storage_[i];
    }
}

int32_t Batch::add(llama_token token, llama_pos pos, llama_seq_id seq, bool output, const float * hidden) {
    if (n_ >= capacity_) {
        throw std::length_error("batch of " + std::to_string(capacity_) + " entries is full");
    }
    const auto i = static_cast<size_t>(n_);
    tokens_[i] = token;
    pos_[i] = pos;
    seq_id_storage_[i] = seq;
    logits_[i] = output ? 1 : 0;
    if (hidden != nullptr && n_embd_ > 0) {
        std::memcpy(&hidden_[i * static_cast<size_t>(n_embd_)], hidden,
                    static_cast<size_t>(n_embd_) * sizeof(float));
    }
    return n_++;
}

llama_batch Batch::view(bool with_hidden) {
    llama_batch b{};
    b.n_tokens = n_;
    b.token = tokens_.data();
    b.embd = with_hidden ? hidden_.data() : nullptr;
    b.pos = pos_.data();
    b.n_seq_id = n_seq_id_.data();
    b.seq_id = seq_id_.data();
    b.logits = logits_.data();
    return b;
}

// ---------------------------------------------------------------- Engine setup

std::shared_ptr<Engine> Engine::create(std::shared_ptr<Model> target,
                                       std::shared_ptr<Model> draft_model, int32_t n_draft,
                                       bool auto_draft, const ContextOptions & copts, Status & status) {
    std::shared_ptr<Engine> e(new Engine());
    e->target_ = std::move(target);
    e->draft_model_ = draft_model ? std::move(draft_model) : e->target_;
    e->n_draft_ = n_draft;
    e->auto_draft_ = auto_draft && n_draft > 0;
    e->n_ctx_ = copts.n_ctx;
    e->n_seq_ = std::max(copts.n_seq, 1);
    const int64_t total_ctx = static_cast<int64_t>(e->n_ctx_) * e->n_seq_;
    if (total_ctx > INT32_MAX) {
        status = Status::error(ErrorCode::invalid_argument,
                               "n_ctx * n_seq (" + std::to_string(total_ctx) + ") exceeds the int32 range", "n_ctx");
        return nullptr;
    }
    // every sequence's draft step must fit one MTP batch: at least n_seq * (n_draft + 1)
    const int64_t per_round = static_cast<int64_t>(e->n_seq_) * (n_draft + 1);
    e->n_batch_ = copts.n_batch > 0 ? copts.n_batch
                                    : static_cast<int32_t>(std::min<int64_t>(total_ctx, std::max<int64_t>(512, per_round)));
    if (n_draft > 0 && e->n_batch_ < per_round) {
        status = Status::error(ErrorCode::invalid_argument,
                               "n_batch (" + std::to_string(e->n_batch_) + ") must be at least n_seq * (n_draft + 1) (" +
                                   std::to_string(per_round) + ")",
                               "n_batch");
        return nullptr;
    }
    e->n_ubatch_ = copts.n_ubatch > 0 ? copts.n_ubatch : e->n_batch_;
    e->n_embd_ = e->target_->n_embd_out();
    e->n_vocab_ = e->target_->n_vocab();
    if (n_draft > 0 && e->n_ubatch_ < n_draft + 2) {
        status = Status::error(ErrorCode::invalid_argument,
                               "n_ubatch (" + std::to_string(e->n_ubatch_) + ") must be at least n_draft + 2 (" +
                                   std::to_string(n_draft + 2) +
                                   ") for recurrent-state rollback; raise n_ubatch/n_ctx or lower n_draft");
        return nullptr;
    }
    e->target_recurrent_ = llama_model_is_recurrent(e->target_->get()) || llama_model_is_hybrid(e->target_->get());
    // replay only makes sense where the memory cannot be cut back and drafts exist
    e->replay_ = copts.rollback == Rollback::replay && e->target_recurrent_ && n_draft > 0;
    if (!e->create_contexts(copts, status)) {
        return nullptr;
    }
    for (llama_seq_id s = e->n_seq_ - 1; s >= 0; --s) {
        e->free_seqs_.push_back(s);  // lowest id first (back of the vector)
    }
    e->prompt_cache_ = copts.prompt_cache;
    e->checkpoint_budget_ = copts.prompt_cache ? static_cast<uint64_t>(std::max<int64_t>(copts.checkpoint_bytes, 0)) : 0;
    e->slot_cache_.resize(static_cast<size_t>(e->n_seq_));
    e->stats_.n_draft.store(n_draft);
    return e;
}

bool Engine::create_contexts(const ContextOptions & copts, Status & status) {
    const bool speculative = n_draft_ > 0;
    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = static_cast<uint32_t>(n_ctx_) * static_cast<uint32_t>(n_seq_);
    cp.n_batch = static_cast<uint32_t>(n_batch_);
    cp.n_ubatch = static_cast<uint32_t>(n_ubatch_);
    // Rollback::replay: every sequence s has a spare id n_seq + s for its backup
    cp.n_seq_max = static_cast<uint32_t>(replay_ ? 2 * n_seq_ : n_seq_);
    // one KV pool for all sequences: any mix of sequences (any ids, any lengths)
    // then shares one ubatch; each sequence's length is bounded by n_ctx here (and a
    // backup shares its sequence's cells instead of needing its own)
    cp.kv_unified = n_seq_ > 1 || replay_;
    cp.n_rs_seq = speculative && !replay_ ? static_cast<uint32_t>(n_draft_) : 0;
    if (copts.n_threads > 0) {
        cp.n_threads = copts.n_threads;
    }
    if (copts.n_threads_batch > 0) {
        cp.n_threads_batch = copts.n_threads_batch;
    }
    cp.flash_attn_type = static_cast<llama_flash_attn_type>(copts.flash_attn);
    if (copts.type_k >= 0) {
        cp.type_k = static_cast<ggml_type>(copts.type_k);
    }
    if (copts.type_v >= 0) {
        cp.type_v = static_cast<ggml_type>(copts.type_v);
    }
    if (copts.offload_kqv >= 0) {
        cp.offload_kqv = copts.offload_kqv != 0;
    }
    cp.no_perf = true;
    cp.abort_callback = &Engine::abort_cb;
    cp.abort_callback_data = this;

    ctx_tgt_.reset(llama_init_from_model(target_->get(), cp));
    if (!ctx_tgt_) {
        status = Status::error(ErrorCode::context,
                               "llama.cpp could not create the target context (n_ctx=" + std::to_string(n_ctx_) +
                                   (n_seq_ > 1 ? " per sequence, n_seq=" + std::to_string(n_seq_) : std::string()) +
                                   "); see the 'mtpstream.llama' log");
        return false;
    }
    batch_tgt_ = std::make_unique<Batch>(n_batch_, 0);
    state_bytes_ = context_state_bytes(ctx_tgt_.get());
    if (!speculative) {
        return true;
    }
    llama_set_embeddings_nextn(ctx_tgt_.get(), true, false);
    llama_context_params dp = cp;
    dp.ctx_type = LLAMA_CONTEXT_TYPE_MTP;
    dp.n_rs_seq = 0;
    dp.ctx_other = ctx_tgt_.get();
    ctx_dft_.reset(llama_init_from_model(draft_model_->get(), dp));
    if (!ctx_dft_) {
        status = Status::error(ErrorCode::no_mtp_head,
                               "llama.cpp could not create the MTP draft context on '" + draft_model_->path() + "'");
        return false;
    }
    apply_row_mode();
    batch_dft_ = std::make_unique<Batch>(n_batch_, n_embd_);
    state_bytes_ += context_state_bytes(ctx_dft_.get());
    if (auto_draft_ && n_seq_ == 1 && !replay_) {
        // (with replay the target context keeps no snapshots: nothing to avoid)
        plain_ = std::make_unique<PlainContext>(target_->get(), cp);
    }
    return true;
}

Engine::~Engine() {
    // contexts before models (the members holding models are declared first, so
    // they would outlive the contexts anyway; this makes the order explicit)
    ctx_dft_.reset();
    plain_.reset();
    ctx_tgt_.reset();
}

void Engine::apply_row_mode() {
    // Unmasked: the MTP context exports a hidden row for every batch entry,
    // indexed by batch position. The masked mode of llama.cpp 0.3.36 copies the
    // first n_outputs rows of the batch instead of the rows of the entries marked
    // for output, so the first draft step (catch-up tokens + the last token in one
    // batch, only the last an output) would read the row of the batch's first
    // token. tests/test_llama_rows.py pins both behaviours.
    const bool masked = fault_ == Fault::masked_draft_rows;
    llama_set_embeddings_nextn(ctx_dft_.get(), true, masked);
    applied_fault_ = fault_;
}

void Engine::set_fault(Fault f) { fault_ = f; }

// ---------------------------------------------------------------- sequences

// How many of g's prompt tokens a sequence's cache can stand for. An extendable
// memory stands for all of its tokens when the prompt extends them by at least one
// (the last prompt token must be decoded for its logits). Otherwise the latest
// checkpoint inside the common prefix, short of the prompt's last token: a hybrid
// model's recurrent state cannot be cut back, so a checkpoint is the only way back.
Reuse Engine::reusable(const SlotCache & c, const Generation & g) const {
    const auto & p = g.opts.prompt;
    if (!prompt_cache_ || !g.opts.cache_prompt || c.tokens.empty()) {
        return {};
    }
    const size_t n_common = static_cast<size_t>(
        std::mismatch(c.tokens.begin(), c.tokens.end(), p.begin(), p.end()).first - c.tokens.begin());
    if (c.extendable && n_common == c.tokens.size() && c.tokens.size() < p.size()) {
        return {static_cast<int32_t>(n_common), -1};
    }
    for (size_t i = c.checkpoints.size(); i-- > 0;) {
        const auto n = static_cast<size_t>(c.checkpoints[i].n);
        if (n <= n_common && n < p.size()) {
            return {static_cast<int32_t>(n), static_cast<int32_t>(i)};
        }
    }
    return {};
}

// Take the free sequence whose cache covers the longest prefix of the prompt and
// restore that state into g; when none does, the free sequence holding nothing (the
// lowest id), else the one whose cache was kept longest ago.
bool Engine::claim_seq(Generation & g) {
    if (free_seqs_.empty()) {
        return false;
    }
    size_t best = free_seqs_.size() - 1;  // the lowest id
    Reuse reuse;
    for (size_t i = 0; i < free_seqs_.size(); ++i) {
        const Reuse r = reusable(slot_cache_[static_cast<size_t>(free_seqs_[i])], g);
        if (r.n > reuse.n) {
            reuse = r;
            best = i;
        }
    }
    if (reuse.n == 0) {
        auto age = [&](size_t i) {
            const SlotCache & c = slot_cache_[static_cast<size_t>(free_seqs_[i])];
            return c.tokens.empty() ? 0 : c.stored;  // an empty sequence first
        };
        for (size_t i = free_seqs_.size(); i-- > 0;) {  // lowest id first
            if (age(i) < age(best)) {
                best = i;
            }
        }
    }
    g.seq = free_seqs_[best];
    free_seqs_.erase(free_seqs_.begin() + static_cast<std::ptrdiff_t>(best));
    SlotCache & c = slot_cache_[static_cast<size_t>(g.seq)];
    if (reuse.checkpoint >= 0 && !restore_checkpoint(g, c, reuse.checkpoint)) {
        reuse = {};  // llama.cpp refused the state: start cold
    }
    if (reuse.n == 0) {
        forget(c, 0);
        clear_seq(g.seq);
        return true;
    }
    if (reuse.checkpoint < 0) {
        g.cached = reuse.n;
        g.carry = c.carry;
        g.pending_tok = c.pending_tok;
        g.pending_h = c.pending_h;
        g.pending_pos = c.pending_pos;
    }
    c.extendable = false;  // the sequence now belongs to g
    return true;
}

// What the call leaves to the next one (see Keep).
void Engine::release_seq(Generation & g, Keep keep) {
    if (g.seq < 0) {
        return;
    }
    SlotCache & c = slot_cache_[static_cast<size_t>(g.seq)];
    if (replay_) {  // a verify that ended the call (aborted, failed) left its backup
        llama_memory_seq_rm(llama_get_memory(ctx_tgt_.get()), backup_of(g.seq), -1, -1);
    }
    bool on_plain = plain_ && plain_->active();  // the plain context is cleared at every call
    if (on_plain && keep != Keep::nothing && prompt_cache_ && g.opts.cache_prompt &&
        plain_->move(ctx_tgt_.get(), false)) {
        // "auto" ended the call on the snapshot-free context: bring the state back
        // (checkpoints are restored into the main context)
        SessionStats::add(stats_.context_switches, 1);
        on_plain = false;
    }
    if (keep == Keep::everything && prompt_cache_ && g.opts.cache_prompt && !flush_replay(g)) {
        keep = Keep::checkpoints;  // the memory is stale past them
    }
    if (!prompt_cache_ || !g.opts.cache_prompt || on_plain || (keep == Keep::everything && g.n_past == 0) ||
        (keep == Keep::checkpoints && c.checkpoints.empty())) {
        keep = Keep::nothing;
    }
    c.stored = ++cache_clock_;
    if (keep == Keep::everything) {
        c.extendable = true;
        c.tokens = g.history;  // positions 0..n_past-1: what the memory holds
        c.carry = g.carry;
        c.pending_tok = g.pending_tok;
        c.pending_h = g.pending_h;
        c.pending_pos = g.pending_pos;
    } else if (keep == Keep::checkpoints) {
        c.extendable = false;
        c.tokens = g.opts.prompt;  // every checkpoint of the sequence is a prefix of it
    } else {
        forget(c, 0);
        clear_seq(g.seq);
    }
    // lowest free id first: sequences stay packed at the low ids
    free_seqs_.push_back(g.seq);
    std::sort(free_seqs_.begin(), free_seqs_.end(), std::greater<>());
    g.seq = -1;
}

// Drop what a sequence's cache holds, but its first `keep_first` checkpoints.
void Engine::forget(SlotCache & c, size_t keep_first) {
    if (keep_first == 0) {
        c.extendable = false;
        c.tokens.clear();
        c.carry.clear();
        c.pending_tok.clear();
        c.pending_h.clear();
    }
    while (c.checkpoints.size() > keep_first) {
        drop_checkpoint(c, c.checkpoints.size() - 1);
    }
}

void Engine::clear_seq(llama_seq_id seq) {
    llama_memory_seq_rm(llama_get_memory(ctx_tgt_.get()), seq, -1, -1);
    if (ctx_dft_) {
        llama_memory_seq_rm(llama_get_memory(ctx_dft_.get()), seq, -1, -1);
    }
}

// ---------------------------------------------------------------- requests

std::unique_ptr<Generation> Engine::prepare(GenerationOptions opts, Status & status) const {
    if (opts.prompt.empty()) {
        status = Status::error(ErrorCode::invalid_argument, "prompt is empty", "prompt");
        return nullptr;
    }
    for (size_t i = 0; i < opts.prompt.size(); ++i) {
        const llama_token t = opts.prompt[i];
        if (t < 0 || t >= n_vocab_) {
            status = Status::error(ErrorCode::invalid_argument,
                                   "prompt token " + std::to_string(t) + " at index " + std::to_string(i) +
                                       " is out of range for a vocabulary of " + std::to_string(n_vocab_) +
                                       " tokens",
                                   "prompt");
            return nullptr;
        }
    }
    if (static_cast<int64_t>(opts.prompt.size()) > n_ctx_) {
        status = Status::error(ErrorCode::context_overflow,
                               "prompt has " + std::to_string(opts.prompt.size()) +
                                   " tokens but the context holds " + std::to_string(n_ctx_) +
                                   (n_seq_ > 1 ? " per sequence" : ""));
        return nullptr;
    }
    if (opts.max_tokens < 1) {
        status = Status::error(ErrorCode::invalid_argument, "max_tokens must be >= 1", "max_tokens");
        return nullptr;
    }
    const auto & s = opts.sampling;
    SamplerPtr grammar;
    if (!s.grammar.empty()) {
        const std::string printed = capture_stderr(
            [&] { grammar.reset(llama_sampler_init_grammar(target_->vocab(), s.grammar.c_str(), "root")); });
        if (!grammar) {
            const std::string detail = parse_error_line(printed);
            status = Status::error(ErrorCode::invalid_argument,
                                   "grammar could not be parsed (GBNF with a 'root' rule expected)" +
                                       (detail.empty() ? std::string() : ": " + detail),
                                   "grammar");
            return nullptr;
        }
    }
    SamplerPtr chain(llama_sampler_chain_init(llama_sampler_chain_default_params()));
    if (s.penalty_repeat != 1.0f || s.penalty_freq != 0.0f || s.penalty_present != 0.0f) {
        llama_sampler_chain_add(chain.get(), llama_sampler_init_penalties(n_vocab_, s.penalty_last_n, s.penalty_repeat,
                                                                          s.penalty_freq, s.penalty_present));
    }
    if (s.temp <= 0.0f) {
        llama_sampler_chain_add(chain.get(), llama_sampler_init_greedy());
    } else {
        if (s.top_k > 0) {
            llama_sampler_chain_add(chain.get(), llama_sampler_init_top_k(s.top_k));
        }
        if (s.top_p < 1.0f) {
            llama_sampler_chain_add(chain.get(), llama_sampler_init_top_p(s.top_p, 1));
        }
        if (s.min_p > 0.0f) {
            llama_sampler_chain_add(chain.get(), llama_sampler_init_min_p(s.min_p, 1));
        }
        llama_sampler_chain_add(chain.get(), llama_sampler_init_temp(s.temp));
        llama_sampler_chain_add(chain.get(), llama_sampler_init_dist(s.seed));
    }
    auto g = std::make_unique<Generation>();
    g->text = TextStream(opts.stop);
    g->opts = std::move(opts);
    g->sampler = std::move(chain);
    g->grammar = std::move(grammar);
    g->carry.assign(static_cast<size_t>(n_embd_), 0.0f);
    if (auto_draft_) {
        g->auto_draft = std::make_unique<AutoDraft>(n_draft_);
    }
    return g;
}

// ---------------------------------------------------------------- the step

void Engine::step(const std::vector<Job *> & jobs) {
    std::vector<Lane> lanes;
    for (Job * job : jobs) {
        Generation & g = job->generation();
        if (g.phase == Generation::Phase::finished) {
            continue;
        }
        if (job->cancel_requested()) {
            finish_cancelled(*job);
            continue;
        }
        if (g.phase == Generation::Phase::decode) {
            Lane lane;
            lane.job = job;
            lane.g = &g;
            lanes.push_back(std::move(lane));
            continue;
        }
        try {
            if (g.seq < 0) {
                begin(*job);
            }
            if (g.phase == Generation::Phase::prefill) {
                prefill_step(*job);
            }
        } catch (const std::exception & ex) {
            finish(*job, EventKind::error, "", -1, std::string("llama.cpp raised: ") + ex.what());
        }
    }
    if (lanes.empty()) {
        return;
    }
    try {
        decode_round(lanes);
    } catch (const std::exception & ex) {
        for (Lane & lane : lanes) {
            finish(*lane.job, EventKind::error, "", -1, std::string("llama.cpp raised: ") + ex.what());
        }
    }
}

int32_t Engine::decode(llama_context * ctx, Batch & batch, bool with_hidden, const std::vector<Job *> & jobs) {
    abort_flags_.clear();
    for (Job * job : jobs) {
        abort_flags_.push_back(&job->cancel_flag());
    }
    const int32_t rc = llama_decode(ctx, batch.view(with_hidden));
    abort_flags_.clear();
    return rc;
}

bool Engine::abort_cb(void * data) {
    // a shared decode is aborted only when every sequence in it was cancelled; the
    // others are ended (or go on) between rounds
    const auto * e = static_cast<const Engine *>(data);
    if (e->abort_flags_.empty()) {
        return false;
    }
    for (const std::atomic<bool> * flag : e->abort_flags_) {
        if (!flag->load(std::memory_order_relaxed)) {
            return false;
        }
    }
    return true;
}

bool Engine::sample(Generation & g, llama_context * ctx, int32_t idx, llama_token & out, std::string & error) {
    if (!g.grammar) {
        out = llama_sampler_sample(g.sampler.get(), ctx, idx);
        return true;
    }
    // llama_sampler_sample, with the grammar applied on its own first: when it leaves
    // no token alive, the dist sampler would abort inside llama.cpp
    if (!g.grammar_error.empty()) {
        error = g.grammar_error;
        return false;
    }
    const float * logits = llama_get_logits_ith(ctx, idx);
    if (logits == nullptr) {
        error = "the target produced no logits";
        return false;
    }
    cand_.resize(static_cast<size_t>(n_vocab_));
    for (llama_token t = 0; t < n_vocab_; ++t) {
        cand_[static_cast<size_t>(t)] = llama_token_data{t, logits[t], 0.0f};
    }
    llama_token_data_array arr{cand_.data(), cand_.size(), -1, false};
    const int64_t t_apply = thread_cpu_us();
    llama_sampler_apply(g.grammar.get(), &arr);
    if (grammar_over_budget(g, t_apply, "applying", error)) {
        return false;
    }
    const bool alive = std::any_of(arr.data, arr.data + arr.size,
                                   [](const llama_token_data & d) { return d.logit > -INFINITY; });
    if (!alive) {
        error = "the grammar admits no token after " + std::to_string(g.emitted) +
                " generated tokens (no token of the vocabulary can continue it)";
        return false;
    }
    llama_sampler_apply(g.sampler.get(), &arr);
    if (arr.selected < 0 || arr.selected >= static_cast<int64_t>(arr.size)) {
        error = "sampling selected no token (the logits are not finite)";
        return false;
    }
    out = arr.data[arr.selected].id;
    const int64_t t_accept = thread_cpu_us();
    llama_sampler_accept(g.grammar.get(), out);
    if (grammar_over_budget(g, t_accept, "accepting a token of", error)) {
        return false;
    }
    llama_sampler_accept(g.sampler.get(), out);
    return true;
}

// A grammar step (apply over the vocabulary, or accept) that ran over the call's
// budget ends the call: llama.cpp's grammar code cannot be interrupted, so the step is
// measured once it returns, and the generation fails from then on (sample() checks
// grammar_error first) instead of paying the next, likely costlier, step.
bool Engine::grammar_over_budget(Generation & g, int64_t since, const char * what, std::string & error) {
    const int64_t budget = g.opts.sampling.grammar_step_budget_us;
    const int64_t took = thread_cpu_us() - since;  // CPU time: a loaded machine does not fail a call
    if (budget <= 0 || took <= budget) {
        return false;
    }
    char text[200];
    std::snprintf(text, sizeof text,
                  "the grammar is too costly: %s it took %.3f s of CPU time, over the grammar step budget of %.3f s",
                  what, static_cast<double>(took) / 1e6, static_cast<double>(budget) / 1e6);
    g.grammar_error = text;
    error = g.grammar_error;
    return true;
}

// ---------------------------------------------------------------- events

void Engine::emit_token(Job & job, llama_token tok, bool & ended) {
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
                    const std::string & error) {
    Generation & g = job.generation();
    if (g.phase == Generation::Phase::finished) {
        return;
    }
    Event ev;
    ev.kind = kind;
    ev.token = tok;
    ev.finish_reason = reason;
    ev.error = error;
    if (kind == EventKind::done || kind == EventKind::eog) {
        ev.text = g.text.flush();
    }
    ev.usage = usage(g);
    // the sequence is free for the next call at once; a clean end keeps its state for
    // a call that extends it (the prompt cache)
    const bool clean = (kind == EventKind::done || kind == EventKind::eog) && g.phase == Generation::Phase::decode;
    g.phase = Generation::Phase::finished;
    release_seq(g, clean ? Keep::everything : kind == EventKind::cancelled ? Keep::checkpoints : Keep::nothing);
    job.push(std::move(ev));  // terminal: marks the job finished
}

void Engine::fail_decode(Job & job, int32_t rc, const char * which) {
    // 2 = aborted by the abort callback, i.e. the job was cancelled
    if (rc == 2 || job.cancel_requested()) {
        finish_cancelled(job);
    } else {
        finish(job, EventKind::error, "", -1,
               std::string("llama_decode failed on the ") + which + " context (code " + std::to_string(rc) + ")");
    }
}

void Engine::finish_cancelled(Job & job) { finish(job, EventKind::cancelled, "cancelled", -1); }

}  // namespace mtpstream

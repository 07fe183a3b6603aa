// The engine's setup (sizes, contexts, the sequence pool), request validation, the
// step that dispatches prefill and decode work, and the one decode call.
#include "engine.hpp"

#include <algorithm>
#include <cmath>
#include <exception>
#include <string>

#include "device_argmax.hpp"
#include "job.hpp"
#include "logprobs.hpp"
#include "llama_staging.h"
#include "rollback_choice.hpp"

namespace mtpstream {

// ---------------------------------------------------------------- setup

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
    e->n_embd_ = e->target_->n_embd_out();
    e->n_vocab_ = e->target_->n_vocab();
    if (!e->check_sizes(copts, status) || !e->check_workers(status)) {
        return nullptr;
    }
    e->target_recurrent_ = llama_model_is_recurrent(e->target_->get()) || llama_model_is_hybrid(e->target_->get());
    // replay only makes sense where the memory cannot be cut back and drafts exist
    if (e->target_recurrent_ && n_draft > 0) {
        e->pick_rollback(copts);
    }
    if (!e->create_contexts(copts, status)) {
        e->check_workers(status);  // a lost worker refused the contexts' buffers: say so
        return nullptr;
    }
    e->pool_ = std::make_unique<SequencePool>(e->n_seq_, copts.prompt_cache, copts.checkpoint_bytes,
                                              e->target_recurrent_, e->ctx_tgt_.get(), e->ctx_dft_.get(), e->stats_);
    e->stats_.n_draft.store(n_draft);
    e->board_.reset(e->n_seq_);
    if (!copts.grammar_host.empty()) {
        e->grammar_host_ = std::make_shared<GrammarHost>(copts.grammar_host);  // started at the first grammar step
    }
    if (!e->check_workers(status)) {  // lost while the contexts were made or timed
        return nullptr;
    }
    return e;
}

std::string Engine::worker_loss() const {
    std::string out = target_->rpc_loss();
    if (out.empty() && draft_model_ != target_) {
        out = draft_model_->rpc_loss();
    }
    return out.empty() ? out : out + "; the model is unusable: load it again once the worker is back";
}

bool Engine::check_workers(Status & status) const {
    const std::string loss = worker_loss();
    if (!loss.empty()) {
        status = Status::error(ErrorCode::worker_lost, loss);
    }
    return loss.empty();
}

// n_batch and n_ubatch (their defaults filled in) against what a round needs.
bool Engine::check_sizes(const ContextOptions & copts, Status & status) {
    const int64_t total_ctx = static_cast<int64_t>(n_ctx_) * n_seq_;
    if (total_ctx > INT32_MAX) {
        status = Status::error(ErrorCode::invalid_argument,
                               "n_ctx * n_seq (" + std::to_string(total_ctx) + ") exceeds the int32 range", "n_ctx");
        return false;
    }
    // every sequence's draft step must fit one MTP batch: at least n_seq * (n_draft + 1)
    const int64_t per_round = static_cast<int64_t>(n_seq_) * (n_draft_ + 1);
    n_batch_ = copts.n_batch > 0 ? copts.n_batch
                                 : static_cast<int32_t>(std::min<int64_t>(total_ctx, std::max<int64_t>(512, per_round)));
    if (n_draft_ > 0 && n_batch_ < per_round) {
        status = Status::error(ErrorCode::invalid_argument,
                               "n_batch (" + std::to_string(n_batch_) + ") must be at least n_seq * (n_draft + 1) (" +
                                   std::to_string(per_round) + ")",
                               "n_batch");
        return false;
    }
    n_ubatch_ = copts.n_ubatch > 0 ? copts.n_ubatch : n_batch_;
    if (n_draft_ > 0 && n_ubatch_ < n_draft_ + 2) {
        status = Status::error(ErrorCode::invalid_argument,
                               "n_ubatch (" + std::to_string(n_ubatch_) + ") must be at least n_draft + 2 (" +
                                   std::to_string(n_draft_ + 2) +
                                   ") for recurrent-state rollback; raise n_ubatch/n_ctx or lower n_draft");
        return false;
    }
    return true;
}

namespace {

llama_context_params target_params(const ContextOptions & copts) {
    llama_context_params cp = llama_context_default_params();
    apply_compute_options(cp, copts);
    if (copts.offload_kqv >= 0) {
        cp.offload_kqv = copts.offload_kqv != 0;
    }
    return cp;
}

}  // namespace

void Engine::pick_rollback(const ContextOptions & copts) {
    if (copts.rollback != Rollback::automatic) {
        replay_ = copts.rollback == Rollback::replay;
        return;
    }
    const RollbackChoice choice = choose_rollback(target_->get(), target_params(copts), n_seq_, n_draft_);
    replay_ = choice.replay;
    verify_cost_ratio_ = choice.verify_cost_ratio;
}

bool Engine::create_contexts(const ContextOptions & copts, Status & status) {
    const bool speculative = n_draft_ > 0;
    llama_context_params cp = target_params(copts);
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
    if (speculative) {
        create_draft_context(cp, status);
    }
    return status.ok();
}

void Engine::create_draft_context(const llama_context_params & cp, Status & status) {
    llama_set_embeddings_nextn(ctx_tgt_.get(), true, false);
    llama_context_params dp = cp;
    dp.ctx_type = LLAMA_CONTEXT_TYPE_MTP;
    dp.n_rs_seq = 0;
    dp.ctx_other = ctx_tgt_.get();
    ctx_dft_.reset(llama_init_from_model(draft_model_->get(), dp));
    if (!ctx_dft_) {
        status = Status::error(ErrorCode::no_mtp_head,
                               "llama.cpp could not create the MTP draft context on '" + draft_model_->path() + "'");
        return;
    }
    apply_row_mode();
    if (n_seq_ == 1) {
        set_draft_argmax(true);
    }
    batch_dft_ = std::make_unique<Batch>(n_batch_, n_embd_);
    state_bytes_ += context_state_bytes(ctx_dft_.get());
    if (auto_draft_ && n_seq_ == 1 && !replay_) {
        // (with replay the target context keeps no snapshots: nothing to avoid)
        plain_ = std::make_unique<PlainContext>(target_->get(), cp);
    }
}

Engine::~Engine() {
    // the pool first (it points into the contexts), then contexts before models (the
    // members holding models are declared first, so they would outlive the contexts
    // anyway; this makes the order explicit)
    pool_.reset();
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

void Engine::set_draft_argmax(bool on) {
    if (on == draft_on_device_ || n_seq_ != 1 || draft_argmax_refused_) {
        return;
    }
    if (!on) {
        llama_set_sampler(ctx_dft_.get(), 0, nullptr);
        draft_on_device_ = false;
        draft_argmax_.reset();  // a chain is initialised once: a later attach makes a new one
        return;
    }
    SamplerPtr chain = make_device_argmax();
    if (llama_set_sampler(ctx_dft_.get(), 0, chain.get()) && device_argmax_ready(chain.get())) {
        draft_argmax_ = std::move(chain);
        draft_on_device_ = true;
        return;
    }
    llama_set_sampler(ctx_dft_.get(), 0, nullptr);
    draft_argmax_refused_ = true;
}

void Engine::set_fault(Fault f) { fault_ = f; }

// ---------------------------------------------------------------- requests

bool Engine::check_prompt(const std::vector<llama_token> & prompt, Status & status) const {
    if (prompt.empty()) {
        status = Status::error(ErrorCode::invalid_argument, "prompt is empty", "prompt");
        return false;
    }
    for (size_t i = 0; i < prompt.size(); ++i) {
        const llama_token t = prompt[i];
        if (t < 0 || t >= n_vocab_) {
            status = Status::error(ErrorCode::invalid_argument,
                                   "prompt token " + std::to_string(t) + " at index " + std::to_string(i) +
                                       " is out of range for a vocabulary of " + std::to_string(n_vocab_) +
                                       " tokens",
                                   "prompt");
            return false;
        }
    }
    if (static_cast<int64_t>(prompt.size()) > n_ctx_) {
        status = Status::error(ErrorCode::context_overflow,
                               "prompt has " + std::to_string(prompt.size()) +
                                   " tokens but the context holds " + std::to_string(n_ctx_) +
                                   (n_seq_ > 1 ? " per sequence" : ""));
        return false;
    }
    return true;
}

std::unique_ptr<Generation> Engine::prepare(GenerationOptions opts, Status & status) const {
    if (!check_workers(status) || !check_prompt(opts.prompt, status)) {
        return nullptr;
    }
    if (opts.max_tokens < 1) {
        status = Status::error(ErrorCode::invalid_argument, "max_tokens must be >= 1", "max_tokens");
        return nullptr;
    }
    if (opts.n_logprobs < -1 || opts.n_logprobs > kMaxTopLogprobs) {
        status = Status::error(ErrorCode::invalid_argument,
                               "invalid option 'logprobs': must be from 0 to " + std::to_string(kMaxTopLogprobs),
                               "logprobs");
        return nullptr;
    }
    for (const auto & [token, bias] : opts.sampling.logit_bias) {
        if (token < 0 || token >= n_vocab_ || !std::isfinite(bias)) {
            status = Status::error(ErrorCode::invalid_argument,
                                   "invalid option 'logit_bias': token " + std::to_string(token) +
                                       (std::isfinite(bias) ? " is out of range for a vocabulary of " +
                                                                  std::to_string(n_vocab_) + " tokens"
                                                            : " has a bias that is not finite"),
                                   "logit_bias");
            return nullptr;
        }
    }
    auto sampler = Sampler::create(opts.sampling, target_->vocab(), n_vocab_, grammar_host_, status);
    if (!sampler) {
        return nullptr;
    }
    auto g = std::make_unique<Generation>();
    g->text = TextStream(opts.stop);
    g->opts = std::move(opts);
    g->sampler = std::move(sampler);
    g->feed.restart(0, static_cast<size_t>(n_embd_));
    if (auto_draft_) {
        g->auto_draft = std::make_unique<AutoDraft>(n_draft_);
    }
    return g;
}

// ---------------------------------------------------------------- the step

void Engine::step(const std::vector<Job *> & jobs) {
    advance(jobs);
    publish_slots(jobs);
}

void Engine::publish_slots(const std::vector<Job *> & jobs) {
    std::vector<SlotView> views = board_.read();
    for (SlotView & v : views) {
        const SeqCacheInfo info = pool_->describe(v.id);
        v.busy = !info.free;
        if (!v.busy) {
            v.n_prompt = v.n_cached = v.n_decoded = v.n_past = 0;
        }
        v.cache_tokens = v.busy ? 0 : info.tokens;
        v.cache_extendable = !v.busy && info.extendable;
        v.cache_checkpoints = v.busy ? 0 : info.checkpoints;
    }
    for (Job * job : jobs) {  // a busy sequence outside this step keeps its last numbers
        const Generation & g = job->generation();
        if (g.seq < 0 || g.seq >= n_seq_) {
            continue;
        }
        SlotView & v = views[static_cast<size_t>(g.seq)];
        v.n_prompt = static_cast<int32_t>(g.opts.prompt.size());
        v.n_cached = g.cached;
        v.n_decoded = g.emitted;
        v.n_past = g.phase == Generation::Phase::prefill ? static_cast<int32_t>(g.prefill_pos) : g.n_past;
    }
    board_.publish(std::move(views));
}

void Engine::advance(const std::vector<Job *> & jobs) {
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
            fail(*job, std::string("llama.cpp raised: ") + ex.what());
        }
    }
    if (lanes.empty()) {
        return;
    }
    try {
        decode_round(lanes);
    } catch (const std::exception & ex) {
        for (Lane & lane : lanes) {
            fail(*lane.job, std::string("llama.cpp raised: ") + ex.what());
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
    // a decode over a lost RPC worker computed on stand-in data: nothing of it is used
    const bool lost = target_->rpc_lost() || draft_model_->rpc_lost();
    return lost ? kWorkerLost : rc;
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
    if (!g.sampler->sample(ctx, idx, g.emitted, out, error)) {
        return false;
    }
    record_logprobs(g, ctx, idx, out);
    return true;
}

// logprobs asked for: the target's own row at this position (whatever drafted the
// token), unchanged by sampling
void Engine::record_logprobs(Generation & g, llama_context * ctx, int32_t idx, llama_token tok) {
    if (g.opts.n_logprobs >= 0) {
        g.logprobs.emplace_back();
        token_logprobs(Sampler::logits(ctx, idx), n_vocab_, tok, g.opts.n_logprobs, g.logprobs.back());
    }
}

}  // namespace mtpstream

#include "engine.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <exception>
#include <mutex>

#include <unistd.h>

#include "job.hpp"
#include "llama_staging.h"

namespace mtpstream {

namespace {

int64_t now_us() {
    return std::chrono::duration_cast<std::chrono::microseconds>(
               std::chrono::steady_clock::now().time_since_epoch())
        .count();
}

llama_token argmax(const float * logits, int32_t n) {
    llama_token best = 0;
    float best_v = logits[0];
    for (int32_t i = 1; i < n; ++i) {
        if (logits[i] > best_v) {
            best_v = logits[i];
            best = i;
        }
    }
    return best;
}

uint64_t elapsed(int64_t since) { return static_cast<uint64_t>(std::max<int64_t>(0, now_us() - since)); }

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

void Batch::add(llama_token token, llama_pos pos, bool output, const float * hidden) {
    const auto i = static_cast<size_t>(n_);
    tokens_[i] = token;
    pos_[i] = pos;
    logits_[i] = output ? 1 : 0;
    if (hidden != nullptr && n_embd_ > 0) {
        std::memcpy(&hidden_[i * static_cast<size_t>(n_embd_)], hidden,
                    static_cast<size_t>(n_embd_) * sizeof(float));
    }
    ++n_;
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
    e->n_draft_ = n_draft;
    e->n_ctx_ = copts.n_ctx;
    e->n_batch_ = copts.n_batch > 0 ? copts.n_batch : std::min(copts.n_ctx, 512);
    e->n_ubatch_ = copts.n_ubatch > 0 ? copts.n_ubatch : e->n_batch_;
    e->n_embd_ = e->target_->n_embd_out();
    e->n_vocab_ = e->target_->n_vocab();
    const bool speculative = n_draft > 0;

    if (e->n_batch_ < n_draft + 1) {
        status = Status::error(ErrorCode::invalid_argument,
                               "n_batch (" + std::to_string(e->n_batch_) + ") must be at least n_draft + 1 (" +
                                   std::to_string(n_draft + 1) + ")");
        return nullptr;
    }
    if (e->n_ubatch_ > e->n_batch_) {
        status = Status::error(ErrorCode::invalid_argument, "n_ubatch must not exceed n_batch");
        return nullptr;
    }
    if (speculative && e->n_ubatch_ < n_draft + 2) {
        status = Status::error(ErrorCode::invalid_argument,
                               "n_ubatch (" + std::to_string(e->n_ubatch_) + ") must be at least n_draft + 2 (" +
                                   std::to_string(n_draft + 2) +
                                   ") for recurrent-state rollback; raise n_ubatch/n_ctx or lower n_draft");
        return nullptr;
    }

    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = static_cast<uint32_t>(e->n_ctx_);
    cp.n_batch = static_cast<uint32_t>(e->n_batch_);
    cp.n_ubatch = static_cast<uint32_t>(e->n_ubatch_);
    cp.n_seq_max = 1;
    cp.n_rs_seq = speculative ? static_cast<uint32_t>(n_draft) : 0;
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
    cp.abort_callback_data = e.get();

    e->ctx_tgt_.reset(llama_init_from_model(e->target_->get(), cp));
    if (!e->ctx_tgt_) {
        status = Status::error(ErrorCode::context,
                               "llama.cpp could not create the target context (n_ctx=" +
                                   std::to_string(e->n_ctx_) + "); see the 'mtpstream.llama' log");
        return nullptr;
    }
    e->batch_tgt_ = std::make_unique<Batch>(e->n_batch_, 0);

    if (speculative) {
        e->draft_model_ = draft_model ? std::move(draft_model) : e->target_;
        llama_set_embeddings_nextn(e->ctx_tgt_.get(), true, false);
        llama_context_params dp = cp;
        dp.ctx_type = LLAMA_CONTEXT_TYPE_MTP;
        dp.n_rs_seq = 0;
        dp.ctx_other = e->ctx_tgt_.get();
        e->ctx_dft_.reset(llama_init_from_model(e->draft_model_->get(), dp));
        if (!e->ctx_dft_) {
            status = Status::error(ErrorCode::no_mtp_head,
                                   "llama.cpp could not create the MTP draft context on '" +
                                       e->draft_model_->path() + "'");
            return nullptr;
        }
        e->apply_row_mode();
        e->batch_dft_ = std::make_unique<Batch>(e->n_batch_, e->n_embd_);
        e->drafts_.reserve(static_cast<size_t>(n_draft));
        e->rows_.resize(static_cast<size_t>(n_draft + 1) * static_cast<size_t>(e->n_embd_));
    }
    if (auto_draft && speculative) {
        e->auto_ = std::make_unique<AutoDraft>(n_draft);
        e->plain_params_ = cp;
        e->plain_params_.n_rs_seq = 0;
    }
    e->stats_.n_draft.store(n_draft);
    return e;
}

Engine::~Engine() {
    // contexts before models: ContextPtr members are declared after the models but
    // release explicitly to make the order obvious.
    ctx_dft_.reset();
    ctx_plain_.reset();
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

void Engine::set_fault(Fault f) {
    fault_ = f;
}

bool Engine::sample(Generation & g, llama_context * ctx, int32_t idx, llama_token & out, std::string & error) {
    if (!g.grammar) {
        out = llama_sampler_sample(g.sampler.get(), ctx, idx);
        return true;
    }
    // llama_sampler_sample, with the grammar applied on its own first: when it leaves
    // no token alive, the dist sampler would abort inside llama.cpp
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
    {
        llama_sampler_apply(g.grammar.get(), &arr);
        const bool alive = std::any_of(arr.data, arr.data + arr.size,
                                       [](const llama_token_data & d) { return d.logit > -INFINITY; });
        if (!alive) {
            error = "the grammar admits no token after " + std::to_string(g.emitted) +
                    " generated tokens (no token of the vocabulary can continue it)";
            return false;
        }
    }
    llama_sampler_apply(g.sampler.get(), &arr);
    if (arr.selected < 0 || arr.selected >= static_cast<int64_t>(arr.size)) {
        error = "sampling selected no token (the logits are not finite)";
        return false;
    }
    out = arr.data[arr.selected].id;
    llama_sampler_accept(g.grammar.get(), out);
    llama_sampler_accept(g.sampler.get(), out);
    return true;
}

bool Engine::abort_cb(void * data) {
    const auto * e = static_cast<const Engine *>(data);
    const std::atomic<bool> * flag = e->abort_flag_.load();
    return flag != nullptr && flag->load(std::memory_order_relaxed);
}

std::unique_ptr<Generation> Engine::prepare(GenerationOptions opts, Status & status) const {
    if (opts.prompt.empty()) {
        status = Status::error(ErrorCode::invalid_argument, "prompt is empty");
        return nullptr;
    }
    for (size_t i = 0; i < opts.prompt.size(); ++i) {
        const llama_token t = opts.prompt[i];
        if (t < 0 || t >= n_vocab_) {
            status = Status::error(ErrorCode::invalid_argument,
                                   "prompt token " + std::to_string(t) + " at index " + std::to_string(i) +
                                       " is out of range for a vocabulary of " + std::to_string(n_vocab_) +
                                       " tokens");
            return nullptr;
        }
    }
    if (static_cast<int64_t>(opts.prompt.size()) > n_ctx_) {
        status = Status::error(ErrorCode::context_overflow,
                               "prompt has " + std::to_string(opts.prompt.size()) +
                                   " tokens but the context holds " + std::to_string(n_ctx_));
        return nullptr;
    }
    if (opts.max_tokens < 1) {
        status = Status::error(ErrorCode::invalid_argument, "max_tokens must be >= 1");
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
    return g;
}

// ---------------------------------------------------------------- the loop

void Engine::step(Job & job) {
    Generation & g = job.generation();
    abort_flag_.store(&job.cancel_flag());
    try {
        if (g.phase == Generation::Phase::prefill) {
            if (g.prefill_pos == 0) {
                begin(job);
            }
            prefill_step(job);
        } else if (g.phase == Generation::Phase::decode) {
            decode_step(job);
        }
    } catch (const std::exception & ex) {
        finish(job, EventKind::error, "", -1, std::string("llama.cpp raised: ") + ex.what());
    }
    abort_flag_.store(nullptr);
}

void Engine::begin(Job & job) {
    Generation & g = job.generation();
    llama_memory_clear(llama_get_memory(ctx_tgt_.get()), true);
    if (ctx_dft_) {
        llama_memory_clear(llama_get_memory(ctx_dft_.get()), true);
    }
    if (ctx_plain_) {
        llama_memory_clear(llama_get_memory(ctx_plain_.get()), true);
    }
    // "auto" that ended the previous call decoding without drafts starts this one
    // (prompt included) on the snapshot-free context
    on_plain_ = ctx_plain_ != nullptr && plain_streak_ >= 2;
    llama_sampler_reset(g.sampler.get());
    if (g.grammar) {
        llama_sampler_reset(g.grammar.get());
    }
    std::fill(g.carry.begin(), g.carry.end(), 0.0f);
    g.t_start_us = now_us();
    SessionStats::add(stats_.prompt_tokens, g.opts.prompt.size());
}

bool Engine::prefill_tokens(Generation & g, const llama_token * tokens, int32_t n, int32_t pos0,
                            bool want_logits, bool defer_draft) {
    for (int32_t off = 0; off < n; off += n_batch_) {
        const int32_t m = std::min(n_batch_, n - off);
        batch_tgt_->clear();
        for (int32_t i = 0; i < m; ++i) {
            batch_tgt_->add(tokens[off + i], pos0 + off + i, want_logits && off + i == n - 1);
        }
        if (llama_decode(live(), batch_tgt_->view(false)) != 0) {
            return false;
        }
        if (!ctx_dft_) {
            continue;
        }
        const float * rows = llama_get_embeddings_nextn(live());
        if (rows == nullptr) {
            return false;
        }
        const auto row = [&](int32_t i) {
            return i == 0 ? g.carry.data() : rows + static_cast<size_t>(i - 1) * n_embd_;
        };
        if (defer_draft) {
            // keep the (token, hidden row) pairs; the draft context catches up on
            // them in the first decode step, after the first token is out
            if (g.pending_tok.empty()) {
                g.pending_pos = pos0 + off;
            }
            for (int32_t i = 0; i < m; ++i) {
                g.pending_tok.push_back(tokens[off + i]);
                g.pending_h.insert(g.pending_h.end(), row(i), row(i) + n_embd_);
            }
        } else {
            batch_dft_->clear();
            for (int32_t i = 0; i < m; ++i) {
                batch_dft_->add(tokens[off + i], pos0 + off + i, false, row(i));
            }
            if (llama_decode(ctx_dft_.get(), batch_dft_->view(true)) != 0) {
                return false;
            }
        }
        std::memcpy(g.carry.data(), rows + static_cast<size_t>(m - 1) * n_embd_,
                    static_cast<size_t>(n_embd_) * sizeof(float));
    }
    return true;
}

void Engine::prefill_step(Job & job) {
    Generation & g = job.generation();
    const auto n_prompt = static_cast<int32_t>(g.opts.prompt.size());
    const int64_t t0 = now_us();
    // one chunk per step so a cancel or another session gets a turn between chunks
    const int32_t pos = static_cast<int32_t>(g.prefill_pos);
    const int32_t m = std::min(n_batch_, n_prompt - pos);
    const bool last_chunk = pos + m == n_prompt;
    // the last chunk's draft-context work waits until the first token is out
    // (time to first token stays that of plain decoding)
    if (!prefill_tokens(g, g.opts.prompt.data() + pos, m, pos, last_chunk, last_chunk)) {
        SessionStats::add(stats_.t_prefill_us, elapsed(t0));
        if (job.cancel_requested()) {
            finish_cancelled(job);
        } else {
            finish(job, EventKind::error, "", -1, "llama_decode failed while processing the prompt");
        }
        return;
    }
    g.prefill_pos += static_cast<size_t>(m);
    SessionStats::add(stats_.t_prefill_us, elapsed(t0));
    if (!last_chunk) {
        return;
    }
    const int64_t ts = now_us();
    llama_token first = -1;
    std::string error;
    if (!sample(g, live(), m - 1, first, error)) {
        SessionStats::add(stats_.t_sample_us, elapsed(ts));
        finish(job, EventKind::error, "", -1, error);
        return;
    }
    SessionStats::add(stats_.t_sample_us, elapsed(ts));
    g.history = g.opts.prompt;
    g.n_past = n_prompt;
    g.last = first;
    if (g.pending_tok.empty()) {
        g.pending_pos = n_prompt;
    }
    g.phase = Generation::Phase::decode;
    bool ended = false;
    emit_token(job, first, ended);
}

bool Engine::flush_pending(Generation & g) {
    const auto n = static_cast<int32_t>(g.pending_tok.size());
    for (int32_t off = 0; off < n; off += n_batch_) {
        const int32_t m = std::min(n_batch_, n - off);
        batch_dft_->clear();
        for (int32_t i = 0; i < m; ++i) {
            batch_dft_->add(g.pending_tok[static_cast<size_t>(off + i)], g.pending_pos + off + i, false,
                            &g.pending_h[static_cast<size_t>(off + i) * n_embd_]);
        }
        if (llama_decode(ctx_dft_.get(), batch_dft_->view(true)) != 0) {
            return false;
        }
    }
    g.pending_pos += n;
    g.pending_tok.clear();
    g.pending_h.clear();
    return true;
}

bool Engine::use_plain_context(bool plain) {
    if (plain == on_plain_) {
        return true;
    }
    if (plain && !ctx_plain_) {
        if (plain_failed_) {
            return false;
        }
        ctx_plain_.reset(llama_init_from_model(target_->get(), plain_params_));
        if (!ctx_plain_) {
            plain_failed_ = true;  // e.g. out of memory: keep decoding on the snapshot context
            return false;
        }
        llama_set_embeddings_nextn(ctx_plain_.get(), true, false);
    }
    llama_context * src = live();
    llama_context * dst = plain ? ctx_plain_.get() : ctx_tgt_.get();
    const size_t size = llama_state_seq_get_size_ext(src, 0, LLAMA_STATE_SEQ_FLAGS_NONE);
    state_buf_.resize(size);
    const size_t written = llama_state_seq_get_data_ext(src, state_buf_.data(), size, 0, LLAMA_STATE_SEQ_FLAGS_NONE);
    llama_memory_clear(llama_get_memory(dst), true);
    if (written == 0 ||
        llama_state_seq_set_data_ext(dst, state_buf_.data(), written, 0, LLAMA_STATE_SEQ_FLAGS_NONE) == 0) {
        llama_memory_clear(llama_get_memory(dst), true);
        return false;
    }
    on_plain_ = plain;
    SessionStats::add(stats_.context_switches, 1);
    return true;
}

bool Engine::rebuild_memory(Generation & g) {
    on_plain_ = false;  // the plain context is cleared whenever the sequence moves there
    llama_memory_clear(llama_get_memory(ctx_tgt_.get()), true);
    if (ctx_dft_) {
        llama_memory_clear(llama_get_memory(ctx_dft_.get()), true);
    }
    std::fill(g.carry.begin(), g.carry.end(), 0.0f);
    g.pending_tok.clear();
    g.pending_h.clear();
    g.pending_pos = g.n_past;
    return prefill_tokens(g, g.history.data(), g.n_past, 0, false, false);
}

void Engine::decode_step(Job & job) {
    Generation & g = job.generation();
    const int64_t t_begin = now_us();
    const int32_t remaining = g.opts.max_tokens - g.emitted;
    const int32_t room = n_ctx_ - g.n_past;  // free positions from n_past on
    if (room <= 0 || remaining <= 0) {
        finish(job, EventKind::done, "length", -1);
        return;
    }
    const bool speculative = ctx_dft_ != nullptr;
    if (speculative && applied_fault_ != fault_.load()) {
        apply_row_mode();
    }
    const int32_t k_max = auto_ ? auto_->choose() : n_draft_;
    int32_t k = speculative ? std::min({k_max, remaining - 1, room - 1}) : 0;
    k = std::max(k, 0);
    bool switched = false;  // "auto" moved the sequence between target contexts
    if (auto_) {
        stats_.n_draft.store(k_max, std::memory_order_relaxed);
        // two iterations in a row without drafts: decode on the snapshot-free
        // context; any draft (a probe included) moves the sequence back first
        plain_streak_ = k == 0 ? plain_streak_ + 1 : 0;
        const bool want_plain = plain_streak_ >= 2;
        if (want_plain != on_plain_) {
            switched = true;
            const int64_t t0 = now_us();
            // failing to move to the plain context just keeps decoding where we are;
            // failing to move back rebuilds the target context from the token history
            bool ok = use_plain_context(want_plain) || want_plain;
            if (!ok) {
                SessionStats::add(stats_.rollback_fallbacks, 1);
                ok = rebuild_memory(g);
            }
            SessionStats::add(stats_.t_ckpt_us, elapsed(t0));
            if (!ok) {
                finish(job, EventKind::error, "", -1, "could not move the sequence back to the target context");
                return;
            }
        }
    }
    llama_context * tgt = live();
    llama_memory_t mem_tgt = llama_get_memory(tgt);

    // 1. draft with the MTP head
    uint64_t t_draft = 0;
    drafts_.clear();
    if (speculative && static_cast<int32_t>(g.pending_tok.size()) + n_draft_ + 2 > n_batch_) {
        const int64_t t0 = now_us();
        if (!flush_pending(g)) {
            finish(job, EventKind::error, "", -1, "llama_decode failed on the draft context");
            return;
        }
        t_draft += elapsed(t0);
    }
    if (k > 0) {
        const int64_t t0 = now_us();
        llama_context * dft = ctx_dft_.get();
        batch_dft_->clear();
        // fault injection (tests only): the MTP context never sees the accepted tokens
        const bool skip_catch_up = fault_.load() == Fault::skip_draft_catch_up;
        for (size_t j = 0; j < g.pending_tok.size() && !skip_catch_up; ++j) {
            batch_dft_->add(g.pending_tok[j], g.pending_pos + static_cast<int32_t>(j), false,
                            &g.pending_h[j * static_cast<size_t>(n_embd_)]);
        }
        batch_dft_->add(g.last, g.n_past, true, g.carry.data());
        int32_t out_idx = batch_dft_->size() - 1;
        for (int32_t j = 0; j < k; ++j) {
            const int32_t rc = llama_decode(dft, batch_dft_->view(true));
            if (rc != 0) {
                fail_decode(job, rc, "draft");
                return;
            }
            if (j == 0) {
                g.pending_tok.clear();
                g.pending_h.clear();
                g.pending_pos = g.n_past + 1;
            }
            const float * logits = llama_get_logits_ith(dft, out_idx);
            const float * h = llama_get_embeddings_nextn_ith(dft, out_idx);
            if (logits == nullptr || h == nullptr) {
                finish(job, EventKind::error, "", -1, "the MTP head produced no output");
                return;
            }
            const llama_token d = argmax(logits, n_vocab_);
            drafts_.push_back(d);
            if (j + 1 < k) {
                batch_dft_->clear();
                batch_dft_->add(d, g.n_past + 1 + j, true, h);
                out_idx = 0;
            }
        }
        if (k >= 2 && !llama_memory_seq_rm(llama_get_memory(dft), 0, g.n_past + 1, -1)) {
            finish(job, EventKind::error, "", -1, "could not remove draft cells from the MTP context");
            return;
        }
        t_draft += elapsed(t0);
    }
    SessionStats::add(stats_.t_draft_us, t_draft);

    // 2. verify [last, d1..dk] on the target in one batch
    const int64_t t_v = now_us();
    batch_tgt_->clear();
    batch_tgt_->add(g.last, g.n_past, true);
    for (int32_t j = 0; j < k; ++j) {
        batch_tgt_->add(drafts_[static_cast<size_t>(j)], g.n_past + 1 + j, true);
    }
    const int32_t rc = llama_decode(tgt, batch_tgt_->view(false));
    const uint64_t t_verify = elapsed(t_v);
    SessionStats::add(stats_.t_verify_us, t_verify);
    if (rc != 0) {
        fail_decode(job, rc, "target");
        return;
    }

    // 3. accept: sample the target at each position, in order
    const int64_t t_s = now_us();
    std::vector<llama_token> out;
    out.reserve(static_cast<size_t>(k) + 1);
    int32_t n_acc = 0;
    std::string error;
    for (int32_t i = 0; i <= k; ++i) {
        llama_token tok = -1;
        if (!sample(g, tgt, i, tok, error)) {
            if (i == 0) {
                finish(job, EventKind::error, "", -1, error);
                return;
            }
            // the drafts before i were accepted: the last of them becomes the target's
            // token of this iteration, and the next iteration meets the dead end at i == 0
            --n_acc;
            break;
        }
        out.push_back(tok);
        if (i < k && tok == drafts_[static_cast<size_t>(i)] && !target_->is_eog(tok)) {
            ++n_acc;
            continue;
        }
        break;
    }
    if (speculative) {
        for (int32_t i = 0; i <= n_acc; ++i) {
            const float * h = llama_get_embeddings_nextn_ith(tgt, i);
            if (h == nullptr) {
                finish(job, EventKind::error, "", -1, "the target exported no hidden row");
                return;
            }
            std::memcpy(&rows_[static_cast<size_t>(i) * n_embd_], h, static_cast<size_t>(n_embd_) * sizeof(float));
        }
    }
    SessionStats::add(stats_.t_sample_us, elapsed(t_s));
    SessionStats::add(stats_.iters, 1);
    SessionStats::add(stats_.drafts_generated, static_cast<uint64_t>(k));
    SessionStats::add(stats_.drafts_accepted, static_cast<uint64_t>(n_acc));
    g.drafts += k;
    g.accepted += n_acc;
    if (auto_) {
        auto_->observe(k, n_acc, static_cast<double>(t_draft), static_cast<double>(t_verify), !switched);
    }

    // 4. roll back rejected positions and bring the draft state to the accepted one
    const int64_t t_c = now_us();
    bool rebuild = false;
    if (n_acc < k) {
        rebuild = !llama_memory_seq_rm(mem_tgt, 0, g.n_past + n_acc + 1, -1);
    }
    g.history.push_back(g.last);
    for (int32_t j = 0; j < n_acc; ++j) {
        g.history.push_back(drafts_[static_cast<size_t>(j)]);
    }
    if (speculative) {
        const auto row = [&](int32_t i) { return &rows_[static_cast<size_t>(i) * n_embd_]; };
        if (k == 0) {
            g.pending_tok.push_back(g.last);
            g.pending_h.insert(g.pending_h.end(), g.carry.begin(), g.carry.end());
        }
        for (int32_t j = 0; j < n_acc; ++j) {
            g.pending_tok.push_back(drafts_[static_cast<size_t>(j)]);
            g.pending_h.insert(g.pending_h.end(), row(j), row(j) + n_embd_);
        }
        std::memcpy(g.carry.data(), row(n_acc), static_cast<size_t>(n_embd_) * sizeof(float));
    }
    g.n_past += n_acc + 1;
    g.last = out.back();
    if (rebuild) {
        SessionStats::add(stats_.rollback_fallbacks, 1);
        if (!rebuild_memory(g)) {
            SessionStats::add(stats_.t_ckpt_us, elapsed(t_c));
            finish(job, EventKind::error, "", -1, "could not rebuild the context after a failed rollback");
            return;
        }
    }
    SessionStats::add(stats_.t_ckpt_us, elapsed(t_c));

    // 5. emit
    const int64_t t_e = now_us();
    bool ended = false;
    for (const llama_token tok : out) {
        emit_token(job, tok, ended);
        if (ended) {
            break;
        }
    }
    SessionStats::add(stats_.t_sample_us, elapsed(t_e));
    SessionStats::add(stats_.t_total_us, elapsed(t_begin));
}

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
    g.phase = Generation::Phase::finished;
    job.push(std::move(ev));
    job.mark_finished();
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

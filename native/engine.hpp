// The MTP speculative engine of one session: a target context and (when
// speculating) a draft context running the model's MTP head, both owned here.
// step() advances a generation by one prefill chunk or one draft/verify/accept/
// rollback iteration; it runs only on the runtime's worker thread.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "auto_draft.hpp"
#include "events.hpp"
#include "generation.hpp"
#include "llama.h"
#include "model.hpp"
#include "options.hpp"
#include "stats.hpp"
#include "status.hpp"

namespace mtpstream {

class Job;

// Test-only fault injection: reintroduce a known bug so that tests can prove the
// oracle heads detect it (mtpstream.testing.inject_fault).
enum class Fault : int32_t {
    none = 0,
    masked_draft_rows = 1,    // read the MTP context's rows in llama.cpp's masked mode
    skip_draft_catch_up = 2,  // never feed accepted tokens to the MTP context
};

struct ContextDeleter {
    void operator()(llama_context * c) const { llama_free(c); }
};
using ContextPtr = std::unique_ptr<llama_context, ContextDeleter>;

// A llama_batch whose arrays live in vectors (token ids and, for the draft
// context, hidden rows side by side).
class Batch {
public:
    Batch(int32_t capacity, int32_t n_embd);
    void clear() { n_ = 0; }
    int32_t size() const { return n_; }
    int32_t capacity() const { return capacity_; }
    void add(llama_token token, llama_pos pos, bool output, const float * hidden = nullptr);
    llama_batch view(bool with_hidden);

private:
    int32_t capacity_;
    int32_t n_embd_;
    int32_t n_ = 0;
    std::vector<llama_token> tokens_;
    std::vector<float> hidden_;
    std::vector<llama_pos> pos_;
    std::vector<int32_t> n_seq_id_;
    std::vector<llama_seq_id> seq_id_storage_;
    std::vector<llama_seq_id *> seq_id_;
    std::vector<int8_t> logits_;
};

class Engine {
public:
    // n_draft = 0: plain decoding (no draft context). draft_model null: the target's own head.
    // auto_draft: n_draft is the longest draft; each iteration picks its own length.
    static std::shared_ptr<Engine> create(std::shared_ptr<Model> target,
                                          std::shared_ptr<Model> draft_model, int32_t n_draft,
                                          bool auto_draft, const ContextOptions & copts, Status & status);
    ~Engine();
    Engine(const Engine &) = delete;
    Engine & operator=(const Engine &) = delete;

    // Validate a request and build its sampler (Python thread).
    std::unique_ptr<Generation> prepare(GenerationOptions opts, Status & status) const;
    // Advance the job's generation by one unit of work (worker thread).
    void step(Job & job);
    // Finish the job because it was cancelled (worker thread).
    void finish_cancelled(Job & job);

    // Takes effect at the next decode step (any thread).
    void set_fault(Fault f);
    Fault fault() const { return fault_.load(); }

    const SessionStats & stats() const { return stats_; }
    int32_t n_draft() const { return n_draft_; }
    bool auto_draft() const { return auto_ != nullptr; }
    int32_t n_ctx() const { return n_ctx_; }
    int32_t n_batch() const { return n_batch_; }
    int32_t n_ubatch() const { return n_ubatch_; }
    bool closed() const { return closed_.load(); }
    void mark_closed() { closed_.store(true); }

private:
    Engine() = default;

    void begin(Job & job);
    void apply_row_mode();
    void prefill_step(Job & job);
    void decode_step(Job & job);
    bool flush_pending(Generation & g);
    bool rebuild_memory(Generation & g);
    // The target context decoding happens on: ctx_tgt_, or ctx_plain_ while "auto"
    // runs without drafts.
    llama_context * live() const { return on_plain_ ? ctx_plain_.get() : ctx_tgt_.get(); }
    // "auto" only: move the sequence between the snapshot-keeping target context and
    // the snapshot-free plain one (created on first use). False: stay where it is.
    bool use_plain_context(bool plain);
    // Decode `tokens` (at positions from `pos0`) on the target and feed the draft
    // context (or, with defer_draft, queue the pairs in g.pending); leaves logits
    // for the last token and sets g.carry.
    bool prefill_tokens(Generation & g, const llama_token * tokens, int32_t n, int32_t pos0,
                        bool want_logits, bool defer_draft);
    void emit_token(Job & job, llama_token tok, bool & ended);
    // Sample the target at batch index idx with g's grammar and chain (and accept the
    // token). False, with `error` set, when the grammar admits no token.
    bool sample(Generation & g, llama_context * ctx, int32_t idx, llama_token & out, std::string & error);
    void finish(Job & job, EventKind kind, const std::string & reason, llama_token tok,
                const std::string & error = "");
    void fail_decode(Job & job, int32_t rc, const char * which);
    Usage usage(const Generation & g) const;
    static bool abort_cb(void * data);

    std::shared_ptr<Model> target_;
    std::shared_ptr<Model> draft_model_;
    ContextPtr ctx_tgt_;
    ContextPtr ctx_dft_;
    // "auto" only: a target context without recurrent-state snapshots. Keeping
    // snapshots makes every target decode slower, so while drafting does not pay
    // the sequence lives here; it moves back (state copy) for draft probes.
    ContextPtr ctx_plain_;
    bool on_plain_ = false;
    bool plain_failed_ = false;
    int32_t plain_streak_ = 0;  // consecutive iterations "auto" chose no drafts
    std::vector<uint8_t> state_buf_;
    llama_context_params plain_params_{};
    int32_t n_draft_ = 0;
    int32_t n_ctx_ = 0;
    int32_t n_batch_ = 0;
    int32_t n_ubatch_ = 0;
    int32_t n_embd_ = 0;
    int32_t n_vocab_ = 0;
    std::unique_ptr<Batch> batch_tgt_;
    std::unique_ptr<Batch> batch_dft_;
    std::vector<llama_token> drafts_;
    std::vector<float> rows_;  // target hidden rows of the last verify
    std::vector<llama_token_data> cand_;  // sampling candidates (worker thread only)
    std::unique_ptr<AutoDraft> auto_;
    SessionStats stats_;
    std::atomic<bool> closed_{false};
    std::atomic<Fault> fault_{Fault::none};
    Fault applied_fault_ = Fault::none;
    std::atomic<const std::atomic<bool> *> abort_flag_{nullptr};
};

}  // namespace mtpstream

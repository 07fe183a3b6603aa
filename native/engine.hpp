// The MTP speculative engine of one session: a target context and (when
// speculating) a draft context running the model's MTP head, both owned here and
// both holding up to n_seq sequences. step() advances every runnable generation of
// the session by one unit of work: a prefill chunk for sequences still reading
// their prompt, and one draft/verify/accept/rollback/emit round shared by all the
// decoding sequences (each draft step of every sequence in one MTP decode, every
// verify batch in one target decode). It runs only on the runtime's worker thread.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "events.hpp"
#include "generation.hpp"
#include "llama.h"
#include "model.hpp"
#include "options.hpp"
#include "plain_context.hpp"
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

// A llama_batch whose arrays live in vectors (token ids, sequence ids and, for the
// draft context, hidden rows side by side).
class Batch {
public:
    Batch(int32_t capacity, int32_t n_embd);
    void clear() { n_ = 0; }
    int32_t size() const { return n_; }
    int32_t capacity() const { return capacity_; }
    // Returns the entry's batch index.
    int32_t add(llama_token token, llama_pos pos, llama_seq_id seq, bool output, const float * hidden = nullptr);
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

// One decoding sequence's part in a round.
struct Lane {
    Job * job = nullptr;
    Generation * g = nullptr;
    int32_t k = 0;           // drafts this round
    int32_t k_max = 0;       // what "auto" chose (the fixed n_draft otherwise)
    int32_t draft_idx = -1;  // batch index of this lane's output in the current MTP decode
    int32_t verify_idx = 0;  // batch index of `last` in its verify decode
    std::vector<llama_token> drafts;
    std::vector<llama_token> out;  // tokens the target produced, in order
    int32_t n_acc = 0;
    double t_draft_us = 0.0;  // the draft phase this lane drafted in
    bool switched = false;  // "auto" moved the sequence between target contexts
    bool ended = false;     // finished (or failed) during this round
};

// A point a later prompt may restart from when it diverges after the first n
// tokens of a sequence: the target's hidden row at n - 1 and, on models whose
// memory cannot be cut back (recurrent or hybrid), the target's recurrent state
// after n tokens. The attention KV of positions < n stays in the sequence's memory;
// restoring cuts both contexts back to n.
struct Checkpoint {
    int32_t n = 0;
    uint64_t stored = 0;  // when it was taken (a counter): the oldest is given up first
    std::vector<float> carry;
    std::vector<uint8_t> state;  // llama.cpp's partial sequence state; empty: nothing to restore
    uint64_t bytes() const { return state.size() + carry.size() * sizeof(float); }
};

// What a call left in its sequence's memory. `extendable`: a call whose prompt
// strictly extends `tokens` continues from the memory as it is; that needs the
// target's hidden row at n-1 and the (token, row) pairs the MTP context has not seen
// yet. `checkpoints` (all at prefixes of `tokens`) serve prompts that diverge.
struct SlotCache {
    bool extendable = false;
    uint64_t stored = 0;  // when it was kept (a counter): the oldest slot is given up first
    std::vector<llama_token> tokens;
    std::vector<float> carry;
    std::vector<llama_token> pending_tok;
    std::vector<float> pending_h;
    int32_t pending_pos = 0;
    std::vector<Checkpoint> checkpoints;  // ascending n
};

// How much of a prompt a sequence's cache can stand for, and from where.
struct Reuse {
    int32_t n = 0;           // prompt tokens reused
    int32_t checkpoint = -1;  // index into SlotCache::checkpoints; -1: extend the memory as it is
};

// What a call that ends leaves in its sequence for the next one.
enum class Keep {
    nothing,      // clear the sequence
    checkpoints,  // keep only the checkpoints (a cancelled call: the memory past them is stale)
    everything,   // a clean end: the memory is extendable
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
    // Advance the given jobs (all of this engine, at most n_seq, none finished) by one
    // unit of work each (worker thread).
    void step(const std::vector<Job *> & jobs);
    // Finish the job because it was cancelled (worker thread).
    void finish_cancelled(Job & job);

    // Takes effect at the next decode step (any thread).
    void set_fault(Fault f);
    Fault fault() const { return fault_.load(); }

    const SessionStats & stats() const { return stats_; }
    int32_t n_draft() const { return n_draft_; }
    bool auto_draft() const { return auto_draft_; }
    int32_t n_ctx() const { return n_ctx_; }
    int32_t n_seq() const { return n_seq_; }
    int32_t n_batch() const { return n_batch_; }
    int32_t n_ubatch() const { return n_ubatch_; }
    // Bytes of KV cache and recurrent state of both contexts (fixed at creation).
    uint64_t state_bytes() const { return state_bytes_; }
    bool closed() const { return closed_.load(); }
    void mark_closed() { closed_.store(true); }

private:
    Engine() = default;
    bool create_contexts(const ContextOptions & copts, Status & status);

    // --- sequences and their prompt cache (engine.cpp)
    bool claim_seq(Generation & g);
    void release_seq(Generation & g, Keep keep);
    Reuse reusable(const SlotCache & c, const Generation & g) const;
    void clear_seq(llama_seq_id seq);
    void forget(SlotCache & c, size_t keep_first);

    // --- checkpoints (engine_checkpoint.cpp)
    bool checkpoint_wanted(const Generation & g, int32_t n, int32_t apart) const;
    int32_t checkpoint_position(const Generation & g) const;
    bool boundary_checkpoint(const Generation & g) const;
    void take_checkpoint(Generation & g);  // never throws: a checkpoint is optional
    void keep_checkpoint(Generation & g);
    bool restore_checkpoint(Generation & g, SlotCache & c, int32_t index);
    void make_room(uint64_t bytes);
    void drop_checkpoint(SlotCache & c, size_t i);

    // --- prefill (engine_prefill.cpp)
    void begin(Job & job);
    void prefill_step(Job & job);
    bool prefill_tokens(Generation & g, const llama_token * tokens, int32_t n, int32_t pos0,
                        bool want_logits, bool defer_draft);
    bool flush_pending(Generation & g);
    void add_replay(Generation & g);
    bool flush_replay(Generation & g);
    bool rebuild_memory(Generation & g);

    // --- one decode round over the decoding sequences (engine_decode.cpp)
    void decode_round(std::vector<Lane> & lanes);
    bool plan_lane(Lane & lane);
    bool move_for_auto(Lane & lane);
    void draft_phase(std::vector<Lane> & lanes);
    bool draft_catch_up(std::vector<Lane> & lanes);
    void verify_phase(std::vector<Lane> & lanes);
    void verify_group(std::vector<Lane *> & group);
    bool accept_lane(Lane & lane);
    bool rollback_lane(Lane & lane);
    bool replay_rollback(Lane & lane);
    void emit_lane(Lane & lane);
    void fail_lanes(const std::vector<Lane *> & lanes, int32_t rc, const char * which);

    // --- shared helpers (engine.cpp)
    // The target context the sequence decodes on: ctx_tgt_, or the plain context
    // while "auto" runs a single sequence without drafts.
    llama_context * live() const { return plain_ && plain_->active() ? plain_->get() : ctx_tgt_.get(); }
    void apply_row_mode();
    void emit_token(Job & job, llama_token tok, bool & ended);
    // Sample the target at batch index idx with g's grammar and chain (and accept the
    // token). False, with `error` set, when the grammar admits no token or a grammar
    // step ran over the call's grammar_step_budget_us.
    bool sample(Generation & g, llama_context * ctx, int32_t idx, llama_token & out, std::string & error);
    static bool grammar_over_budget(Generation & g, int64_t since, const char * what, std::string & error);
    void finish(Job & job, EventKind kind, const std::string & reason, llama_token tok,
                const std::string & error = "");
    void fail_decode(Job & job, int32_t rc, const char * which);
    Usage usage(const Generation & g) const;
    // A decode that llama.cpp may abort: only when every job sharing it was cancelled.
    int32_t decode(llama_context * ctx, Batch & batch, bool with_hidden, const std::vector<Job *> & jobs);
    static bool abort_cb(void * data);

    std::shared_ptr<Model> target_;
    std::shared_ptr<Model> draft_model_;
    ContextPtr ctx_tgt_;
    ContextPtr ctx_dft_;
    // "auto" with n_seq == 1: the snapshot-free target context (see plain_context.hpp)
    std::unique_ptr<PlainContext> plain_;
    bool auto_draft_ = false;
    int32_t n_draft_ = 0;
    int32_t n_ctx_ = 0;  // per sequence
    int32_t n_seq_ = 1;
    int32_t n_batch_ = 0;
    int32_t n_ubatch_ = 0;
    int32_t n_embd_ = 0;
    int32_t n_vocab_ = 0;
    uint64_t state_bytes_ = 0;
    std::vector<llama_seq_id> free_seqs_;
    bool prompt_cache_ = true;
    std::vector<SlotCache> slot_cache_;  // per sequence id
    uint64_t cache_clock_ = 0;
    uint64_t checkpoint_budget_ = 0;  // bytes
    bool target_recurrent_ = false;   // the target's memory cannot be cut back (recurrent state)
    bool replay_ = false;             // Rollback::replay in effect (see options.hpp)
    // Rollback::replay: the spare sequence id holding seq's state during a verify
    llama_seq_id backup_of(llama_seq_id seq) const { return n_seq_ + seq; }
    std::unique_ptr<Batch> batch_tgt_;
    std::unique_ptr<Batch> batch_dft_;
    std::vector<llama_token_data> cand_;  // sampling candidates (worker thread only)
    SessionStats stats_;
    std::atomic<bool> closed_{false};
    std::atomic<Fault> fault_{Fault::none};
    Fault applied_fault_ = Fault::none;
    std::vector<const std::atomic<bool> *> abort_flags_;  // the jobs of the running decode
};

}  // namespace mtpstream

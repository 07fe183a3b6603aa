// The MTP speculative engine of one session: a target context and (when
// speculating) a draft context running the model's MTP head, both owned here and
// both holding up to n_seq sequences. step() advances every runnable generation of
// the session by one unit of work: a prefill chunk for sequences still reading
// their prompt, and one draft/verify/accept/rollback/emit round shared by all the
// decoding sequences (each draft step of every sequence in one MTP decode, every
// verify batch in one target decode). It runs only on the runtime's worker thread.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "batch.hpp"
#include "draft_chain.hpp"
#include "events.hpp"
#include "generation.hpp"
#include "grammar_host.hpp"
#include "llama.h"
#include "llama_handles.hpp"
#include "model.hpp"
#include "options.hpp"
#include "plain_context.hpp"
#include "sequence_pool.hpp"
#include "slot_board.hpp"
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

// One decoding sequence's part in a round.
struct Lane {
    Job * job = nullptr;
    Generation * g = nullptr;
    int32_t k = 0;           // drafts this round
    int32_t k_max = 0;       // what "auto" chose (the fixed n_draft otherwise)
    ChainLane chain;         // its part in the draft chain (chain.drafts: this round's drafts)
    int32_t verify_idx = 0;  // batch index of `last` in its verify decode
    std::vector<llama_token> out;  // tokens the target produced, in order
    int32_t n_acc = 0;
    double t_draft_us = 0.0;  // the draft phase this lane drafted in
    bool switched = false;  // "auto" moved the sequence between target contexts
    bool ended = false;     // finished (or failed) during this round
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
    // unit of work each, then publish the sequences' views (worker thread).
    void step(const std::vector<Job *> & jobs);
    // What each sequence is doing, as of the last step (any thread).
    std::vector<SlotView> slots() const { return board_.read(); }

    // Takes effect at the next decode step (any thread).
    void set_fault(Fault f);
    Fault fault() const { return fault_.load(); }

    const SessionStats & stats() const { return stats_; }
    int32_t n_draft() const { return n_draft_; }
    bool auto_draft() const { return auto_draft_; }
    // the rollback in effect: "replay", "snapshots", or "" (no recurrent memory to
    // roll back, or no drafts)
    const char * rollback() const {
        return replay_ ? "replay" : (target_recurrent_ && n_draft_ > 0 ? "snapshots" : "");
    }
    // Rollback::automatic with several sequences: what its choice measured (0 otherwise)
    double verify_cost_ratio() const { return verify_cost_ratio_; }
    int32_t n_ctx() const { return n_ctx_; }
    int32_t n_seq() const { return n_seq_; }
    int32_t n_batch() const { return n_batch_; }
    int32_t n_ubatch() const { return n_ubatch_; }
    // The most events one step may queue for a job: n_draft + 1 tokens, as many
    // stats events and a terminal one (a job runs only with this much room).
    std::size_t events_per_step() const { return 2 * static_cast<std::size_t>(n_draft_) + 4; }
    // Bytes of KV cache and recurrent state of both contexts (fixed at creation).
    uint64_t state_bytes() const { return state_bytes_; }
    bool closed() const { return closed_.load(); }
    void mark_closed() { closed_.store(true); }

private:
    Engine() = default;
    bool check_sizes(const ContextOptions & copts, Status & status);
    void pick_rollback(const ContextOptions & copts);
    bool create_contexts(const ContextOptions & copts, Status & status);
    void create_draft_context(const llama_context_params & cp, Status & status);

    void advance(const std::vector<Job *> & jobs);
    void publish_slots(const std::vector<Job *> & jobs);

    // --- prefill (engine_prefill.cpp)
    void begin(Job & job);
    void prefill_step(Job & job);
    bool prefill_tokens(Job & job, const llama_token * tokens, int32_t n, int32_t pos0, bool want_logits,
                        bool defer_draft);
    bool flush_pending(Job & job);
    void add_replay(Generation & g);
    bool flush_replay(Job & job);
    bool rebuild_memory(Job & job);
    // The call ends: what its sequence keeps for the next one (see Keep).
    void release_seq(Job & job, Keep keep);

    // --- one decode round over the decoding sequences (engine_decode.cpp)
    void decode_round(std::vector<Lane> & lanes);
    bool plan_lane(Lane & lane);
    bool move_for_auto(Lane & lane);
    void draft_phase(std::vector<Lane> & lanes);
    bool draft_catch_up(std::vector<Lane> & lanes);
    void verify_phase(std::vector<Lane> & lanes);
    void verify_group(std::vector<Lane *> & group);
    bool accept_lane(Lane & lane);
    // --- verifying a lane's drafts (engine_verify.cpp): fill lane.out and lane.n_acc;
    // false, with `error` set, when the call cannot go on
    bool verify_match(Lane & lane, llama_context * tgt, std::string & error);
    bool verify_rejection(Lane & lane, llama_context * tgt, std::string & error);
    bool rollback_lane(Lane & lane);
    bool replay_rollback(Lane & lane);
    void emit_lane(Lane & lane);
    void fail_lanes(const std::vector<Lane *> & lanes, int32_t rc, const char * which);

    // --- shared helpers (engine.cpp)
    // The target context the sequence decodes on: ctx_tgt_, or the plain context
    // while "auto" runs a single sequence without drafts.
    llama_context * live() const { return plain_ && plain_->active() ? plain_->get() : ctx_tgt_.get(); }
    void apply_row_mode();
    // Draft steps of a greedy-drafting lane take their token from llama.cpp's backend
    // sampler on the MTP context (on: attach a fresh greedy chain to sequence 0; off:
    // detach it, for a lane drafting for rejection sampling, which reads the head's
    // logits). A change makes llama.cpp re-reserve its compute graph: done only when a
    // lane's mode differs from the current one.
    void set_draft_argmax(bool on);
    // Every llama_decode of the engine: llama.cpp may abort it (return code 2) once
    // every job sharing it was cancelled.
    // Returns kWorkerLost when an RPC worker of the model was lost (see rpc_relay.hpp).
    int32_t decode(llama_context * ctx, Batch & batch, bool with_hidden, const std::vector<Job *> & jobs);
    static constexpr int32_t kWorkerLost = -1000;
    // What was lost ("lost the RPC worker host:port (why); ..."), "" while nothing is.
    std::string worker_loss() const;
    bool check_workers(Status & status) const;
    // The prompt's checks of prepare(): not empty, tokens in the vocabulary, fits n_ctx.
    bool check_prompt(const std::vector<llama_token> & prompt, Status & status) const;
    static bool abort_cb(void * data);
    // Sample the target at batch index idx for g (see Sampler::sample).
    bool sample(Generation & g, llama_context * ctx, int32_t idx, llama_token & out, std::string & error);
    void record_logprobs(Generation & g, llama_context * ctx, int32_t idx, llama_token tok);

    // --- events (engine_events.cpp)
    // `sampled`: the token's index among those sampled since g.logprobs was cleared
    void emit_token(Job & job, llama_token tok, bool & ended, size_t sampled);
    void finish(Job & job, EventKind kind, const std::string & reason, llama_token tok,
                const std::string & error = "", ErrorCode error_code = ErrorCode::generation);
    // End the job with an error event.
    void fail(Job & job, const std::string & message);
    // End the job after a failed decode: cancelled if it was (the decode was
    // aborted), else an error naming the context.
    void fail_decode(Job & job, int32_t rc, const char * which);
    void finish_cancelled(Job & job);
    // End the job after rebuild_memory failed: cancelled if it was (the rebuild was
    // aborted), else an error with `message`.
    void end_rebuilt(Job & job, const char * message);
    Usage usage(const Generation & g) const;

    std::shared_ptr<Model> target_;
    std::shared_ptr<Model> draft_model_;
    // n_seq == 1: the greedy chain attached to the MTP context's sequence 0 while
    // draft_on_device_ (declared before ctx_dft_, which points to it, so it outlives it).
    // A draft step then reads one token id computed where the head's logits are
    // instead of copying a row of n_vocab logits to the host: over RPC, 4 bytes per
    // step instead of 4 * n_vocab (scripts/rpc_traffic.py).
    SamplerPtr draft_argmax_;
    bool draft_on_device_ = false;
    bool draft_argmax_refused_ = false;  // llama.cpp could not offload it: drafts read logits
    ContextPtr ctx_tgt_;
    ContextPtr ctx_dft_;
    // "auto" with n_seq == 1: the snapshot-free target context (see plain_context.hpp)
    std::unique_ptr<PlainContext> plain_;
    // the sequences and the prompt cache (in the contexts above; destroyed before them)
    std::unique_ptr<SequencePool> pool_;
    std::shared_ptr<GrammarHost> grammar_host_;  // null: grammars run on the worker thread
    bool auto_draft_ = false;
    int32_t n_draft_ = 0;
    int32_t n_ctx_ = 0;  // per sequence
    int32_t n_seq_ = 1;
    int32_t n_batch_ = 0;
    int32_t n_ubatch_ = 0;
    int32_t n_embd_ = 0;
    int32_t n_vocab_ = 0;
    uint64_t state_bytes_ = 0;
    bool target_recurrent_ = false;   // the target's memory cannot be cut back (recurrent state)
    bool replay_ = false;             // Rollback::replay in effect (see options.hpp)
    double verify_cost_ratio_ = 0.0;   // see rollback_choice.hpp
    // Rollback::replay: the spare sequence id holding seq's state during a verify
    llama_seq_id backup_of(llama_seq_id seq) const { return n_seq_ + seq; }
    std::unique_ptr<Batch> batch_tgt_;
    std::unique_ptr<Batch> batch_dft_;
    TokenDist p_;  // verify="rejection": the target's distribution at the position being verified
    SessionStats stats_;
    SlotBoard board_;
    std::atomic<bool> closed_{false};
    std::atomic<Fault> fault_{Fault::none};
    Fault applied_fault_ = Fault::none;
    std::vector<const std::atomic<bool> *> abort_flags_;  // the jobs of the running decode
};

}  // namespace mtpstream

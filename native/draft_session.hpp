// The low-level MTP draft session (mtpstream.DraftSession; the Rust crate's
// MtpSession): a user decodes on their own target context and hands every decoded
// batch to process(); draft() runs the MTP head (the engine's draft chain,
// draft_chain.hpp) from the last accepted token; accept() says how many drafts the
// user's verify kept. Per sequence the session keeps a DraftFeed (the hidden-row
// pairing of draft_feed.hpp) and the positions it has seen, so that a call out of
// order is an error that says what is missing instead of a silently wrong draft.
//
// Lifetimes: the session owns shared references to both contexts (and through them
// the models); a context closed under it makes every call fail with
// ErrorCode::closed. Calls lock the session, then the context they touch (target
// before draft; contexts never lock a session), so calls from several threads run
// one at a time.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "batch.hpp"
#include "draft_feed.hpp"
#include "status.hpp"
#include "user_context.hpp"

namespace mtpstream {

class DraftSession {
public:
    static std::shared_ptr<DraftSession> create(std::shared_ptr<UserContext> target,
                                                std::shared_ptr<UserContext> draft, int32_t n_seq,
                                                int32_t n_draft_max, Status & status);
    DraftSession(const DraftSession &) = delete;
    DraftSession & operator=(const DraftSession &) = delete;

    Status begin(llama_seq_id seq, const std::vector<llama_token> & prompt);
    Status process(const Batch & batch);
    // n_draft < 0: n_draft_max
    Status draft(llama_seq_id seq, int32_t n_past, llama_token id_last, int32_t n_draft,
                 std::vector<llama_token> & out);
    Status accept(llama_seq_id seq, int32_t n_accepted);
    // Let go of the contexts; every later call fails with ErrorCode::closed.
    void close();
    bool closed();

    int32_t n_seq() const { return n_seq_; }
    int32_t n_draft_max() const { return n_draft_max_; }

private:
    struct Seq {
        DraftFeed feed;
        std::vector<llama_token> seen;  // the tokens at positions 0.. the session has taken in
        // the last draft(), until accept()
        bool drafted = false;
        int32_t draft_pos = 0;
        llama_token draft_last = -1;
        bool last_fed = false;  // the chain gave the MTP context draft_last
        // the verify batch process()ed after it: its tokens and the target's rows
        bool verified = false;
        std::vector<llama_token> vtok;
        std::vector<float> vrows;
    };
    // one sequence's entries in a processed batch
    struct Part {
        std::vector<int32_t> idx;
    };

    DraftSession() = default;
    Status usable() const;
    Status check_seq(llama_seq_id seq) const;
    Status check_part(llama_seq_id seq, const Batch & batch, const Part & part) const;
    void take_part(llama_seq_id seq, const Batch & batch, const Part & part, const float * rows);
    void reset_seq(llama_seq_id seq);  // draft context's mutex held
    Status run_chain(Seq & s, llama_seq_id seq, int32_t n_past, llama_token id_last, int32_t k,
                     std::vector<llama_token> & out);

    std::mutex mu_;
    std::shared_ptr<UserContext> tgt_;
    std::shared_ptr<UserContext> dft_;
    std::unique_ptr<Batch> batch_;
    std::vector<Seq> seqs_;
    int32_t n_seq_ = 1;
    int32_t n_draft_max_ = 1;
    int32_t n_embd_ = 0;
    uint64_t processed_ = 0;  // serial of the last target decode taken in
};

}  // namespace mtpstream

// The MTP draft chain: the one implementation behind the engine's draft phase and
// DraftSession::draft. For every lane, the first MTP decode feeds the sequence's
// pending (token, row) pairs and then its newest token `last` at n_past with the
// carry; draft j + 1 is fed draft j with the hidden row the MTP context itself
// produced for it. All lanes share each decode. Afterwards the draft positions
// (> n_past) leave the MTP context's memory; `last` stays.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "batch.hpp"
#include "draft_feed.hpp"
#include "llama.h"
#include "sampler.hpp"

namespace mtpstream {

struct ChainLane {
    enum class State { drafting, failed, decode_failed };

    DraftFeed * feed = nullptr;
    llama_seq_id seq = 0;
    llama_token last = -1;
    int32_t n_past = 0;
    int32_t k = 0;  // drafts wanted (lanes with k == 0 are left alone)
    // verify="rejection": drafts are drawn from the head's distribution, stored in
    // (*q)[j] (sized k by the caller); null: the head's argmax
    Sampler * sampler = nullptr;
    std::vector<TokenDist> * q = nullptr;
    // the argmax comes from a greedy backend sampler attached to `seq` on the MTP
    // context (llama_get_sampled_token_ith; the logits are not copied to the host)
    bool on_device = false;

    std::vector<llama_token> drafts;  // out
    State state = State::drafting;
    std::string error;  // State::failed: why
    int32_t idx = -1;   // batch index of the lane's output in the current decode
};

// llama_decode on the MTP context of the batch (the caller's abort wiring); 0: ok.
using ChainDecode = std::function<int32_t(Batch &)>;

// Run the chain over `lanes` (k > 0 each) with `batch` (room for every lane's
// pending pairs + 1 entry, hidden rows included). `skip_feed` (a test fault) drops
// the pending pairs instead of feeding them. Returns the code of a failed decode (its
// lanes are then State::decode_failed), else 0; a lane that fails alone is
// State::failed with its error.
int32_t run_draft_chain(llama_context * dft, Batch & batch, int32_t n_vocab, const std::vector<ChainLane *> & lanes,
                        bool skip_feed, const ChainDecode & decode);

// Feed a sequence's pending pairs to the MTP context, a batch at a time; false if a
// decode failed (the pairs stay pending).
bool flush_feed(DraftFeed & feed, llama_seq_id seq, Batch & batch, const ChainDecode & decode);

}  // namespace mtpstream

// n_draft="auto" on a single-sequence session: the snapshot-free target context.
//
// Keeping recurrent-state snapshots (needed to roll drafts back) makes every
// target decode of a hybrid model slower. So while "auto" finds that drafting does
// not pay (two iterations in a row without drafts), the sequence moves, by a state
// copy, to a second target context created without snapshots; any draft (a probe
// included) moves it back first. A call that ended on the plain context starts the
// next one there (prompt included).
#pragma once

#include <cstdint>
#include <vector>

#include "llama.h"
#include "llama_handles.hpp"

namespace mtpstream {

class PlainContext {
public:
    // params: the snapshot context's parameters (copied, without snapshots).
    PlainContext(llama_model * model, const llama_context_params & params);

    bool active() const { return active_; }
    llama_context * get() const { return ctx_.get(); }
    // A new call: start on the plain context if the last call ended there (and
    // `allow`: false when the call reuses the main context's cached state).
    void begin(bool allow);
    // The draft length chosen for this iteration; true if the sequence should now
    // live on the plain context.
    bool want_plain(int32_t k);
    // Move sequence 0 between `snapshots` (the main target context) and the plain
    // context. False: it stays where it was (nothing changed).
    bool move(llama_context * snapshots, bool to_plain);
    // The sequence was rebuilt on the main target context.
    void deactivate() { active_ = false; }

private:
    bool ensure();

    llama_model * model_;
    llama_context_params params_;
    ContextPtr ctx_;
    bool active_ = false;
    bool failed_ = false;  // the context could not be created (e.g. out of memory)
    int32_t streak_ = 0;   // consecutive iterations without drafts
    std::vector<uint8_t> buf_;
};

}  // namespace mtpstream

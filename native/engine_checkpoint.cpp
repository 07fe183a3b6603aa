// Prompt-cache checkpoints: while a call reads its prompt, the sequence's state near
// the prompt's end is kept (see Checkpoint in engine.hpp), so that a later prompt
// sharing that prefix but diverging after it (the same prompt again, an edited last
// message, a trimmed reply) reads only what follows. Checkpoints of all sequences
// share one byte budget; the oldest is given up first.
#include <algorithm>
#include <cstdlib>
#include <exception>

#include "engine.hpp"

namespace mtpstream {

namespace {

// Shorter prefixes are cheaper to read again than to keep.
constexpr int32_t kCheckpointMinTokens = 32;
// A call that reads at least this many new prompt tokens decodes the last one in a
// batch of its own, for a checkpoint one token before the prompt's end (what a
// repeated prompt needs); a call that reads fewer (a chat turn) keeps the state it
// starts from instead, which costs no decode: a repeat then reads those few again.
// The split costs about one single-token decode on every such call; reading r
// tokens again costs about r/8 of them at these batch sizes, so below a few hundred
// tokens it only pays if most prompts are asked twice.
constexpr int32_t kSplitMinNewTokens = 256;
// A long prompt also leaves checkpoints where its chunks end (no decode of its own:
// only the copy), at least this far from every other checkpoint of the sequence and
// from the prompt's end: a later prompt sharing a long head (a system prompt, a
// document) but not the rest restarts from the last one before the divergence.
constexpr int32_t kCheckpointSpacing = 256;

}  // namespace

// Whether g may leave a checkpoint at n: checkpoints are on for it, n is long
// enough, and the sequence holds none within `apart` tokens of n.
bool Engine::checkpoint_wanted(const Generation & g, int32_t n, int32_t apart) const {
    if (checkpoint_budget_ == 0 || !g.opts.cache_prompt || g.seq < 0 || n < kCheckpointMinTokens) {
        return false;
    }
    const SlotCache & c = slot_cache_[static_cast<size_t>(g.seq)];
    return std::none_of(c.checkpoints.begin(), c.checkpoints.end(),
                        [&](const Checkpoint & k) { return std::abs(k.n - n) < apart; });
}

// The prompt position (tokens read so far) at which g should leave a checkpoint, or
// -1: one before the prompt's end (its last token then decoded alone) when g reads
// many new tokens, else where g starts (the end of what it reuses).
int32_t Engine::checkpoint_position(const Generation & g) const {
    const auto n_prompt = static_cast<int32_t>(g.opts.prompt.size());
    const int32_t n = n_prompt - g.cached >= kSplitMinNewTokens ? n_prompt - 1 : g.cached;
    return checkpoint_wanted(g, n, 1) ? n : -1;
}

// g has just read a chunk that ends inside its prompt: whether to keep a checkpoint there.
bool Engine::boundary_checkpoint(const Generation & g) const {
    const auto n = static_cast<int32_t>(g.prefill_pos);
    const auto n_prompt = static_cast<int32_t>(g.opts.prompt.size());
    return n_prompt - n >= kCheckpointSpacing && checkpoint_wanted(g, n, kCheckpointSpacing);
}

// g has read its prompt up to checkpoint_position(g) or to a chunk boundary (see
// boundary_checkpoint), and the MTP context has seen every (token, row) pair before it.
void Engine::take_checkpoint(Generation & g) {
    try {
        keep_checkpoint(g);
    } catch (const std::exception &) {
        // out of memory for the copy, or llama.cpp refused: the call goes on without one
    }
}

void Engine::keep_checkpoint(Generation & g) {
    Checkpoint k;
    k.n = static_cast<int32_t>(g.prefill_pos);
    k.carry = g.carry;
    // the recurrent state comes from the context the sequence decodes on (the plain one
    // under "auto"): that part is the same in both, and the call's end brings the rest back
    const size_t size =
        target_recurrent_ ? llama_state_seq_get_size_ext(live(), g.seq, LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY) : 0;
    if ((target_recurrent_ && size == 0) || size + k.bytes() > checkpoint_budget_) {
        return;
    }
    if (size > 0) {
        k.state.resize(size);
        if (llama_state_seq_get_data_ext(live(), k.state.data(), size, g.seq,
                                         LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY) != size) {
            return;
        }
    }
    make_room(k.bytes());
    k.stored = ++cache_clock_;
    SessionStats::add(stats_.checkpoint_bytes, k.bytes());
    SessionStats::add(stats_.checkpoints, 1);
    auto & list = slot_cache_[static_cast<size_t>(g.seq)].checkpoints;  // ascending n
    const auto at = std::upper_bound(list.begin(), list.end(), k.n,
                                     [](int32_t n, const Checkpoint & other) { return n < other.n; });
    list.insert(at, std::move(k));
}

// Put g's sequence back to checkpoint `index` of its cache: the target's state
// restored, both contexts cut back to n tokens, the later checkpoints dropped.
// False: llama.cpp refused (the caller starts the sequence cold).
bool Engine::restore_checkpoint(Generation & g, SlotCache & c, int32_t index) {
    const Checkpoint & k = c.checkpoints[static_cast<size_t>(index)];
    if (!k.state.empty()) {
        size_t read = 0;
        try {  // llama.cpp throws when it cannot place the state
            read = llama_state_seq_set_data_ext(ctx_tgt_.get(), k.state.data(), k.state.size(), g.seq,
                                                LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY);
        } catch (const std::exception &) {
            read = 0;
        }
        if (read != k.state.size()) {
            return false;
        }
    }
    if (!llama_memory_seq_rm(llama_get_memory(ctx_tgt_.get()), g.seq, k.n, -1)) {
        return false;
    }
    if (ctx_dft_ && !llama_memory_seq_rm(llama_get_memory(ctx_dft_.get()), g.seq, k.n, -1)) {
        return false;
    }
    g.cached = k.n;
    g.carry = k.carry;
    g.pending_tok.clear();
    g.pending_h.clear();
    g.pending_pos = k.n;
    c.tokens.resize(static_cast<size_t>(k.n));
    forget(c, static_cast<size_t>(index) + 1);
    return true;
}

// Give up the oldest checkpoints (of any sequence) until `bytes` more fit the budget.
void Engine::make_room(uint64_t bytes) {
    while (stats_.checkpoint_bytes.load() + bytes > checkpoint_budget_) {
        SlotCache * oldest = nullptr;
        size_t at = 0;
        for (auto & c : slot_cache_) {
            for (size_t i = 0; i < c.checkpoints.size(); ++i) {
                if (oldest == nullptr || c.checkpoints[i].stored < oldest->checkpoints[at].stored) {
                    oldest = &c;
                    at = i;
                }
            }
        }
        if (oldest == nullptr) {
            return;
        }
        drop_checkpoint(*oldest, at);
    }
}

void Engine::drop_checkpoint(SlotCache & c, size_t i) {
    SessionStats::sub(stats_.checkpoint_bytes, c.checkpoints[i].bytes());
    SessionStats::sub(stats_.checkpoints, 1);
    c.checkpoints.erase(c.checkpoints.begin() + static_cast<std::ptrdiff_t>(i));
}

}  // namespace mtpstream

// The session's sequences and their prompt cache: which sequence id a call gets,
// what each sequence's memory still stands for when its call ends, and the
// checkpoints (of all sequences, under one byte budget) a diverging prompt can
// restart from. The contexts whose memory holds the sequences belong to the engine;
// the pool only cuts, clears and restores sequences in them. Worker thread only.
#pragma once

#include <cstdint>
#include <vector>

#include "generation.hpp"
#include "llama.h"
#include "stats.hpp"

namespace mtpstream {

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
    DraftFeed feed;  // the target's row at n-1 and the pairs the MTP context has not seen
    std::vector<Checkpoint> checkpoints;  // ascending n
};

// What a sequence holds, as the board of sequences shows it.
struct SeqCacheInfo {
    bool free = true;
    int32_t tokens = 0;
    bool extendable = false;
    int32_t checkpoints = 0;
};

// How much of a prompt a sequence's cache can stand for, and from where.
struct Reuse {
    int32_t n = 0;            // prompt tokens reused
    int32_t checkpoint = -1;  // index into SlotCache::checkpoints; -1: extend the memory as it is
};

// What a call that ends leaves in its sequence for the next one.
enum class Keep {
    nothing,      // clear the sequence
    checkpoints,  // keep only the checkpoints (a cancelled call: the memory past them is stale)
    everything,   // a clean end: the memory is extendable
};

class SequencePool {
public:
    // tgt: the target context the sequences live in (and checkpoints are restored
    // into); dft: the MTP draft context, or null. checkpoint_bytes: the budget of all
    // sequences' checkpoints; recurrent: the target's memory cannot be cut back.
    SequencePool(int32_t n_seq, bool prompt_cache, int64_t checkpoint_bytes, bool recurrent, llama_context * tgt,
                 llama_context * dft, SessionStats & stats);

    // Whether g's call uses the prompt cache.
    bool caching(const Generation & g) const { return prompt_cache_ && g.opts.cache_prompt; }
    // Give g a free sequence (g.seq), with whatever of its prompt a sequence's cache
    // stands for restored into g (g.cached > 0). False when none is free.
    bool claim(Generation & g);
    // g's call ends: keep what `keep` says (less where nothing can be kept) and free
    // its sequence.
    void release(Generation & g, Keep keep);
    // Whether `seq` is free and what its cache keeps.
    SeqCacheInfo describe(llama_seq_id seq) const;
    // Clear a sequence in both contexts.
    void clear_seq(llama_seq_id seq);
    // The sequence's memory was rebuilt, or is lost: its checkpoints stand for nothing.
    void drop_checkpoints(llama_seq_id seq);

    // The prompt position (tokens read so far) at which g should leave a checkpoint, or -1.
    int32_t checkpoint_position(const Generation & g) const;
    // g has just read a chunk that ends inside its prompt: whether to keep a checkpoint there.
    bool boundary_checkpoint(const Generation & g) const;
    // Keep a checkpoint of g's sequence at g.prefill_pos, the recurrent state read from
    // `live` (the context g decodes on). Never throws: a checkpoint is optional.
    void take_checkpoint(Generation & g, llama_context * live);

private:
    Reuse reusable(const SlotCache & c, const Generation & g) const;
    void forget(SlotCache & c, size_t keep_first);
    bool checkpoint_wanted(const Generation & g, int32_t n, int32_t apart) const;
    void keep_checkpoint(Generation & g, llama_context * live);
    bool restore_checkpoint(Generation & g, SlotCache & c, int32_t index);
    void make_room(uint64_t bytes);
    void drop_checkpoint(SlotCache & c, size_t i);

    bool prompt_cache_;
    uint64_t checkpoint_budget_;  // bytes
    bool recurrent_;
    llama_context * tgt_;
    llama_context * dft_;
    SessionStats & stats_;
    std::vector<llama_seq_id> free_seqs_;  // descending: the lowest id at the back
    std::vector<SlotCache> slot_cache_;    // per sequence id
    uint64_t clock_ = 0;
};

}  // namespace mtpstream

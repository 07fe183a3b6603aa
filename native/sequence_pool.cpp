// Sequence allocation and the prompt cache. While a call reads its prompt, the
// sequence's state near the prompt's end is kept as a checkpoint (see Checkpoint),
// so that a later prompt sharing that prefix but diverging after it (the same
// prompt again, an edited last message, a trimmed reply) reads only what follows.
// Checkpoints of all sequences share one byte budget; the oldest is given up first.
#include "sequence_pool.hpp"

#include <algorithm>
#include <cstdlib>
#include <exception>
#include <functional>

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

SequencePool::SequencePool(int32_t n_seq, bool prompt_cache, int64_t checkpoint_bytes, bool recurrent,
                           llama_context * tgt, llama_context * dft, SessionStats & stats)
    : prompt_cache_(prompt_cache),
      checkpoint_budget_(prompt_cache ? static_cast<uint64_t>(std::max<int64_t>(checkpoint_bytes, 0)) : 0),
      recurrent_(recurrent),
      tgt_(tgt),
      dft_(dft),
      stats_(stats),
      slot_cache_(static_cast<size_t>(n_seq)) {
    for (llama_seq_id s = n_seq - 1; s >= 0; --s) {
        free_seqs_.push_back(s);  // lowest id first (back of the vector)
    }
}

// ---------------------------------------------------------------- sequences

// How many of g's prompt tokens a sequence's cache can stand for. An extendable
// memory stands for all of its tokens when the prompt extends them by at least one
// (the last prompt token must be decoded for its logits). Otherwise the latest
// checkpoint inside the common prefix, short of the prompt's last token: a hybrid
// model's recurrent state cannot be cut back, so a checkpoint is the only way back.
Reuse SequencePool::reusable(const SlotCache & c, const Generation & g) const {
    const auto & p = g.opts.prompt;
    if (!caching(g) || c.tokens.empty()) {
        return {};
    }
    const size_t n_common = static_cast<size_t>(
        std::mismatch(c.tokens.begin(), c.tokens.end(), p.begin(), p.end()).first - c.tokens.begin());
    if (c.extendable && n_common == c.tokens.size() && c.tokens.size() < p.size()) {
        return {static_cast<int32_t>(n_common), -1};
    }
    for (size_t i = c.checkpoints.size(); i-- > 0;) {
        const auto n = static_cast<size_t>(c.checkpoints[i].n);
        if (n <= n_common && n < p.size()) {
            return {static_cast<int32_t>(n), static_cast<int32_t>(i)};
        }
    }
    return {};
}

// Take the free sequence whose cache covers the longest prefix of the prompt and
// restore that state into g; when none does, the free sequence holding nothing (the
// lowest id), else the one whose cache was kept longest ago.
bool SequencePool::claim(Generation & g) {
    if (free_seqs_.empty()) {
        return false;
    }
    size_t best = free_seqs_.size() - 1;  // the lowest id
    Reuse reuse;
    for (size_t i = 0; i < free_seqs_.size(); ++i) {
        const Reuse r = reusable(slot_cache_[static_cast<size_t>(free_seqs_[i])], g);
        if (r.n > reuse.n) {
            reuse = r;
            best = i;
        }
    }
    if (reuse.n == 0) {
        auto age = [&](size_t i) {
            const SlotCache & c = slot_cache_[static_cast<size_t>(free_seqs_[i])];
            return c.tokens.empty() ? 0 : c.stored;  // an empty sequence first
        };
        for (size_t i = free_seqs_.size(); i-- > 0;) {  // lowest id first
            if (age(i) < age(best)) {
                best = i;
            }
        }
    }
    g.seq = free_seqs_[best];
    free_seqs_.erase(free_seqs_.begin() + static_cast<std::ptrdiff_t>(best));
    SlotCache & c = slot_cache_[static_cast<size_t>(g.seq)];
    if (reuse.checkpoint >= 0 && !restore_checkpoint(g, c, reuse.checkpoint)) {
        reuse = {};  // llama.cpp refused the state: start cold
    }
    if (reuse.n == 0) {
        forget(c, 0);
        clear_seq(g.seq);
        return true;
    }
    if (reuse.checkpoint < 0) {
        g.cached = reuse.n;
        g.feed = c.feed;
    }
    c.extendable = false;  // the sequence now belongs to g
    return true;
}

SeqCacheInfo SequencePool::describe(llama_seq_id seq) const {
    SeqCacheInfo info;
    info.free = std::find(free_seqs_.begin(), free_seqs_.end(), seq) != free_seqs_.end();
    const SlotCache & c = slot_cache_[static_cast<size_t>(seq)];
    info.tokens = static_cast<int32_t>(c.tokens.size());
    info.extendable = c.extendable;
    info.checkpoints = static_cast<int32_t>(c.checkpoints.size());
    return info;
}

void SequencePool::release(Generation & g, Keep keep) {
    if (g.seq < 0) {
        return;
    }
    SlotCache & c = slot_cache_[static_cast<size_t>(g.seq)];
    if (!caching(g) || (keep == Keep::everything && g.n_past == 0) ||
        (keep == Keep::checkpoints && c.checkpoints.empty())) {
        keep = Keep::nothing;
    }
    c.stored = ++clock_;
    if (keep == Keep::everything) {
        c.extendable = true;
        c.tokens = g.history;  // positions 0..n_past-1: what the memory holds
        c.feed = g.feed;
    } else if (keep == Keep::checkpoints) {
        c.extendable = false;
        c.tokens = g.opts.prompt;  // every checkpoint of the sequence is a prefix of it
    } else {
        forget(c, 0);
        clear_seq(g.seq);
    }
    // lowest free id first: sequences stay packed at the low ids
    free_seqs_.push_back(g.seq);
    std::sort(free_seqs_.begin(), free_seqs_.end(), std::greater<>());
    g.seq = -1;
}

// Drop what a sequence's cache holds, but its first `keep_first` checkpoints.
void SequencePool::forget(SlotCache & c, size_t keep_first) {
    if (keep_first == 0) {
        c.extendable = false;
        c.tokens.clear();
        c.feed = DraftFeed();
    }
    while (c.checkpoints.size() > keep_first) {
        drop_checkpoint(c, c.checkpoints.size() - 1);
    }
}

void SequencePool::clear_seq(llama_seq_id seq) {
    llama_memory_seq_rm(llama_get_memory(tgt_), seq, -1, -1);
    if (dft_ != nullptr) {
        llama_memory_seq_rm(llama_get_memory(dft_), seq, -1, -1);
    }
}

void SequencePool::drop_checkpoints(llama_seq_id seq) {
    SlotCache & c = slot_cache_[static_cast<size_t>(seq)];
    while (!c.checkpoints.empty()) {
        drop_checkpoint(c, c.checkpoints.size() - 1);
    }
}

// ---------------------------------------------------------------- checkpoints

// Whether g may leave a checkpoint at n: checkpoints are on for it, n is long
// enough, and the sequence holds none within `apart` tokens of n.
bool SequencePool::checkpoint_wanted(const Generation & g, int32_t n, int32_t apart) const {
    if (checkpoint_budget_ == 0 || !g.opts.cache_prompt || g.seq < 0 || n < kCheckpointMinTokens) {
        return false;
    }
    const SlotCache & c = slot_cache_[static_cast<size_t>(g.seq)];
    return std::none_of(c.checkpoints.begin(), c.checkpoints.end(),
                        [&](const Checkpoint & k) { return std::abs(k.n - n) < apart; });
}

// One before the prompt's end (its last token then decoded alone) when g reads
// many new tokens, else where g starts (the end of what it reuses); before that, the
// call's checkpoint_hint when g has not read that far yet.
int32_t SequencePool::checkpoint_position(const Generation & g) const {
    const auto n_prompt = static_cast<int32_t>(g.opts.prompt.size());
    const int32_t n = n_prompt - g.cached >= kSplitMinNewTokens ? n_prompt - 1 : g.cached;
    const int32_t base = checkpoint_wanted(g, n, 1) ? n : -1;
    const auto pos = static_cast<int32_t>(g.prefill_pos);
    const int32_t hint = g.opts.checkpoint_hint;
    if (base == pos || hint <= pos || hint >= n_prompt - 1 || !checkpoint_wanted(g, hint, 1)) {
        return base;
    }
    return base > pos && base < hint ? base : hint;
}

bool SequencePool::boundary_checkpoint(const Generation & g) const {
    const auto n = static_cast<int32_t>(g.prefill_pos);
    const auto n_prompt = static_cast<int32_t>(g.opts.prompt.size());
    return n_prompt - n >= kCheckpointSpacing && checkpoint_wanted(g, n, kCheckpointSpacing);
}

// g has read its prompt up to checkpoint_position(g) or to a chunk boundary (see
// boundary_checkpoint), and the MTP context has seen every (token, row) pair before it.
void SequencePool::take_checkpoint(Generation & g, llama_context * live) {
    try {
        keep_checkpoint(g, live);
    } catch (const std::exception &) {
        // out of memory for the copy, or llama.cpp refused: the call goes on without one
    }
}

void SequencePool::keep_checkpoint(Generation & g, llama_context * live) {
    Checkpoint k;
    k.n = static_cast<int32_t>(g.prefill_pos);
    k.carry = g.feed.carry;
    // the recurrent state comes from the context the sequence decodes on (the plain one
    // under "auto"): that part is the same in both, and the call's end brings the rest back
    const size_t size =
        recurrent_ ? llama_state_seq_get_size_ext(live, g.seq, LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY) : 0;
    if ((recurrent_ && size == 0) || size + k.bytes() > checkpoint_budget_) {
        return;
    }
    if (size > 0) {
        k.state.resize(size);
        if (llama_state_seq_get_data_ext(live, k.state.data(), size, g.seq, LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY) !=
            size) {
            return;
        }
    }
    make_room(k.bytes());
    k.stored = ++clock_;
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
bool SequencePool::restore_checkpoint(Generation & g, SlotCache & c, int32_t index) {
    const Checkpoint & k = c.checkpoints[static_cast<size_t>(index)];
    if (!k.state.empty()) {
        size_t read = 0;
        try {  // llama.cpp throws when it cannot place the state
            read = llama_state_seq_set_data_ext(tgt_, k.state.data(), k.state.size(), g.seq,
                                                LLAMA_STATE_SEQ_FLAGS_PARTIAL_ONLY);
        } catch (const std::exception &) {
            read = 0;
        }
        if (read != k.state.size()) {
            return false;
        }
    }
    if (!llama_memory_seq_rm(llama_get_memory(tgt_), g.seq, k.n, -1)) {
        return false;
    }
    if (dft_ != nullptr && !llama_memory_seq_rm(llama_get_memory(dft_), g.seq, k.n, -1)) {
        return false;
    }
    g.cached = k.n;
    g.feed.restart(k.n, k.carry.size(), k.carry.data());
    c.tokens.resize(static_cast<size_t>(k.n));
    forget(c, static_cast<size_t>(index) + 1);
    return true;
}

// Give up the oldest checkpoints (of any sequence) until `bytes` more fit the budget.
void SequencePool::make_room(uint64_t bytes) {
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

void SequencePool::drop_checkpoint(SlotCache & c, size_t i) {
    SessionStats::sub(stats_.checkpoint_bytes, c.checkpoints[i].bytes());
    SessionStats::sub(stats_.checkpoints, 1);
    c.checkpoints.erase(c.checkpoints.begin() + static_cast<std::ptrdiff_t>(i));
}

}  // namespace mtpstream

// Rollback::automatic: which rollback a session of a recurrent or hybrid target uses,
// from what its decodes cost on this machine.
//
// Measured (issue 21; per-token CPU time, interleaved): with one sequence, snapshots
// are never more than a few percent behind replay and far ahead on a model whose
// decode costs its per-iteration overheads (a replayed verify changes the batch shape,
// so llama.cpp rebuilds its graph). With several sequences, replay wins on a model
// whose decode costs its arithmetic (the snapshot writes grow with the sequences) and
// loses on a per-iteration-bound one, where rebuilding the graph for every verify
// costs more than the snapshots. So both verifies are timed on two small scratch
// contexts of the target model (a few decodes each, interleaved, the fastest taken;
// one each when a verify takes over 100 ms): the snapshot context's verify with its
// graph reused, and a snapshot-free verify whose graph is rebuilt each time.
// Replay is chosen when its verify is clearly cheaper: by more than the drafts it
// gives up after a rejection (it drafts as many fewer as it replays) cost.
#pragma once

#include <cstdint>

#include "llama.h"

namespace mtpstream {

// Replay's verify must cost less than this share of the snapshot verify.
constexpr double replay_below = 0.95;

struct RollbackChoice {
    bool replay = false;
    // the replay verify's time over the snapshot verify's (0 when nothing was
    // measured: one sequence, or a scratch context could not be made)
    double verify_cost_ratio = 0.0;
};

// base: the target context's parameters (threads, flash attention, cache types).
RollbackChoice choose_rollback(llama_model * model, llama_context_params base, int32_t n_seq, int32_t n_draft);

}  // namespace mtpstream

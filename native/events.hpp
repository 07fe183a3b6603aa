// What the worker hands to Python, in order, through a job's queue.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "status.hpp"

namespace mtpstream {

enum class EventKind : int {
    token = 0,      // one generated token (text may be "" while bytes are held back)
    stats = 1,      // emit_stats_every tokens went by
    done = 2,       // terminal: max_tokens / stop string / context full
    eog = 3,        // terminal: end-of-generation token (it gets no token event)
    error = 4,      // terminal: decoding failed
    cancelled = 5,  // terminal: acknowledgement of a cancel request
};

struct Usage {
    int32_t prompt_tokens = 0;
    int32_t completion_tokens = 0;
    int32_t drafts_generated = 0;
    int32_t drafts_accepted = 0;
    int32_t cached_tokens = 0;  // prompt tokens reused from the sequence's memory
};

// A token and its log-probability under the target's distribution (logprobs.hpp);
// `piece` is its text with special tokens rendered.
struct TokenProb {
    int32_t token = -1;
    float logprob = 0.0f;
    std::string piece;
};

struct Event {
    EventKind kind = EventKind::token;
    int32_t token = -1;
    std::string text;           // token text; for terminal events: text released at the end
    std::string finish_reason;  // done: "length" or "stop"
    std::string stop;           // done with "stop": the stop string that matched
    Usage usage;
    std::string error;
    ErrorCode error_code = ErrorCode::ok;  // error: generation, or worker_lost
    // token events of a call that asked for logprobs: [the emitted token, its top
    // alternatives, most likely first]; empty otherwise
    std::vector<TokenProb> logprobs;
};

inline bool is_terminal(EventKind k) {
    return k == EventKind::done || k == EventKind::eog || k == EventKind::error ||
           k == EventKind::cancelled;
}

}  // namespace mtpstream

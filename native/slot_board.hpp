// What each of a session's sequences is doing, for readers on other threads (the
// server's /slots): the worker publishes a copy after every step, readers take one.
#pragma once

#include <cstdint>
#include <mutex>
#include <utility>
#include <vector>

namespace mtpstream {

struct SlotView {
    int32_t id = 0;
    bool busy = false;
    // busy: the call's prompt tokens, those reused from the prompt cache, the tokens
    // generated so far and the tokens in the sequence's memory
    int32_t n_prompt = 0;
    int32_t n_cached = 0;
    int32_t n_decoded = 0;
    int32_t n_past = 0;
    // idle: what the prompt cache keeps of the sequence (tokens; whether a prompt
    // extending them continues from the memory as it is; checkpoints)
    int32_t cache_tokens = 0;
    bool cache_extendable = false;
    int32_t cache_checkpoints = 0;
};

class SlotBoard {
public:
    void reset(int32_t n_seq) {
        std::vector<SlotView> views(static_cast<size_t>(n_seq));
        for (int32_t i = 0; i < n_seq; ++i) {
            views[static_cast<size_t>(i)].id = i;
        }
        publish(std::move(views));
    }
    std::vector<SlotView> read() const {
        std::lock_guard<std::mutex> lock(mutex_);
        return views_;
    }
    void publish(std::vector<SlotView> views) {
        std::lock_guard<std::mutex> lock(mutex_);
        views_ = std::move(views);
    }

private:
    mutable std::mutex mutex_;
    std::vector<SlotView> views_;
};

}  // namespace mtpstream

// One generation request: its private state, the bounded event queue the worker
// fills and Python drains, the wake-up socket, and the cancel flag.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <vector>

#include "events.hpp"
#include "generation.hpp"

namespace mtpstream {

class Engine;
struct Scheduler;

class Job {
public:
    Job(std::shared_ptr<Engine> engine, std::shared_ptr<Scheduler> scheduler,
        std::unique_ptr<Generation> generation, int wake_fd, std::size_t capacity);
    ~Job();
    Job(const Job &) = delete;
    Job & operator=(const Job &) = delete;

    // --- consumer side (Python thread) ---
    std::vector<Event> drain();
    // Ask the worker to stop this job and wake it (must not hold the scheduler mutex).
    void request_cancel();
    // Set the cancel flag only (for callers that hold the scheduler mutex and notify).
    void cancel() { cancel_.store(true); }
    bool finished() const { return finished_.load(); }

    // --- producer side (worker thread) ---
    // Queue an event; a terminal one also marks the job finished. The reader is
    // woken at once for the first event after a quiet
    // spell, a terminal event or a filling queue; otherwise the wake-up is deferred
    // (coalesced) until flush_wake(): a fast model then wakes Python once per few
    // tokens instead of once per token.
    void push(Event ev);
    // Send a deferred wake-up: when `force`, or once kWakeCoalesceUs have passed
    // since the last one (worker thread, between steps).
    void flush_wake(bool force);
    bool has_room() const { return size_.load() + reserve_ <= capacity_; }
    bool cancel_requested() const { return cancel_.load(); }
    const std::atomic<bool> & cancel_flag() const { return cancel_; }

    Engine & engine() { return *engine_; }
    const Engine * engine_id() const { return engine_.get(); }
    Generation & generation() { return *generation_; }
    uint64_t last_step = 0;  // scheduler bookkeeping (guarded by the scheduler mutex)

private:
    void wake();

    std::shared_ptr<Engine> engine_;
    std::shared_ptr<Scheduler> scheduler_;
    std::unique_ptr<Generation> generation_;
    int wake_fd_;
    std::size_t capacity_;
    std::size_t reserve_;

    std::mutex mutex_;
    std::deque<Event> queue_;
    std::atomic<std::size_t> size_{0};
    std::atomic<bool> cancel_{false};
    std::atomic<bool> finished_{false};
    bool woken_ = false;        // a wake byte is outstanding (guarded by mutex_)
    bool wake_pending_ = false;  // events are queued, their wake-up deferred (mutex_)
    int64_t last_wake_us_ = 0;   // steady clock (mutex_)
};

}  // namespace mtpstream

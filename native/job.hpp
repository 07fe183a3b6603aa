// One generation request: its private state, the bounded event queue the worker
// fills and Python drains, the wake-up socket, and the cancel flag. A job knows
// nothing of the engine or the runtime above it: it keeps its engine only as the
// one it belongs to (for the runtime), and is handed at construction the one thing
// it asks of the runtime, waking the worker.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <vector>

#include "events.hpp"
#include "generation.hpp"

namespace mtpstream {

class Engine;

class Job {
public:
    // capacity: the event queue's bound; reserve: the most events one step may queue
    // (the job is runnable only with that much room); wake_worker: tells the worker
    // that a job may run again (called without any lock held).
    Job(std::shared_ptr<Engine> engine, std::unique_ptr<Generation> generation, int wake_fd,
        std::size_t capacity, std::size_t reserve, std::function<void()> wake_worker);
    ~Job();
    Job(const Job &) = delete;
    Job & operator=(const Job &) = delete;

    // --- consumer side (Python thread) ---
    std::vector<Event> drain();
    // Ask the worker to stop this job and wake it (must not hold the runtime's lock).
    void request_cancel();
    // Set the cancel flag only (for callers that hold the runtime's lock and notify).
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
    uint64_t last_step = 0;  // the runtime's bookkeeping (guarded by its lock)

private:
    void wake();

    std::shared_ptr<Engine> engine_;
    std::unique_ptr<Generation> generation_;
    std::function<void()> wake_worker_;
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

// The runtime: ONE worker thread that runs every session's generations, one step
// at a time, round-robin across sessions. Within a session the first n_seq calls
// (FIFO) are active and advance together, batched by the engine; later ones queue.
//
// Why one thread: llama-cpp-python's ggml uses OpenMP, and every OS thread that
// calls llama_decode gets its own OpenMP pool. A thread per session would
// multiply pools and oversubscribe the cores; a single decode thread never does.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include <sys/types.h>

#include "status.hpp"

namespace mtpstream {

class Engine;
class Job;

struct Scheduler {
    std::mutex mutex;
    std::condition_variable work;  // the worker waits here
    std::condition_variable idle;  // close() waits here for a session's jobs to end
    std::list<std::shared_ptr<Job>> jobs;
    uint64_t tick = 0;
    bool stop = false;
    bool worker_done = false;  // the worker has returned (after stop)
};

class Runtime {
public:
    Runtime();
    ~Runtime();
    Runtime(const Runtime &) = delete;
    Runtime & operator=(const Runtime &) = delete;

    // What a job calls to wake the worker (it keeps the scheduler alive).
    std::function<void()> worker_waker() const {
        return [sched = sched_] {
            { std::lock_guard<std::mutex> lock(sched->mutex); }
            sched->work.notify_all();
        };
    }
    // Queue a job behind the session's earlier ones; with wait=false, refuse if
    // all of the session's n_seq sequences are busy.
    Status submit(const std::shared_ptr<Job> & job, bool wait);
    // Cancel every job of `engine` and block until none is left.
    void cancel_and_wait(const Engine * engine);
    // Of the jobs (running or queued) of `engine`, how many hold a sequence (active)
    // and how many wait for one (queued).
    struct Counts {
        int active = 0;
        int queued = 0;
    };
    Counts counts(const Engine * engine) const;
    // Cancel every job and stop the worker (idempotent); later submits fail.
    void shutdown();

private:
    void loop();
    std::vector<std::shared_ptr<Job>> pick_locked();

    std::shared_ptr<Scheduler> sched_;
    // a pointer so that a copy of the runtime in a forked child (where the worker
    // thread does not exist) can be leaked instead of joined
    std::unique_ptr<std::thread> thread_;
    pid_t pid_;
};

}  // namespace mtpstream

#include "runtime.hpp"

#include <unistd.h>

#include <algorithm>
#include <map>
#include <string>

#include "engine.hpp"
#include "job.hpp"

namespace mtpstream {

Runtime::Runtime() : sched_(std::make_shared<Scheduler>()), pid_(::getpid()) {
    thread_ = std::make_unique<std::thread>([this] { loop(); });
}

Runtime::~Runtime() {
    if (::getpid() != pid_) {
        // a forked child's copy: the worker thread was not forked and the scheduler's
        // mutex may be held by it forever; leave both alone
        (void) thread_.release();
        (void) new std::shared_ptr<Scheduler>(std::move(sched_));
        return;
    }
    shutdown();
}

void Runtime::shutdown() {
    {
        std::lock_guard<std::mutex> lock(sched_->mutex);
        sched_->stop = true;
        for (auto & job : sched_->jobs) {
            job->cancel();
        }
    }
    sched_->work.notify_all();
    if (thread_->joinable() && thread_->get_id() != std::this_thread::get_id()) {
        thread_->join();
    }
}

Status Runtime::submit(const std::shared_ptr<Job> & job, bool wait) {
    {
        std::lock_guard<std::mutex> lock(sched_->mutex);
        if (sched_->stop) {
            return Status::error(ErrorCode::closed, "the runtime has shut down");
        }
        if (!wait) {
            int busy = 0;
            for (const auto & other : sched_->jobs) {
                busy += other->engine_id() == job->engine_id() && !other->finished() ? 1 : 0;
            }
            const int n_seq = job->engine().n_seq();
            if (busy >= n_seq) {
                return Status::error(ErrorCode::busy,
                                     n_seq == 1 ? std::string("the session is busy with another generation (wait=False)")
                                                : "all " + std::to_string(n_seq) +
                                                      " sequences of the session are busy (wait=False)");
            }
        }
        sched_->jobs.push_back(job);
    }
    sched_->work.notify_all();
    return Status::ok_status();
}

void Runtime::cancel_and_wait(const Engine * engine) {
    std::unique_lock<std::mutex> lock(sched_->mutex);
    for (auto & job : sched_->jobs) {
        if (job->engine_id() == engine) {
            job->cancel();
        }
    }
    sched_->work.notify_all();
    sched_->idle.wait(lock, [&] {
        if (sched_->worker_done) {
            return true;  // nothing will end them any more
        }
        for (const auto & job : sched_->jobs) {
            if (job->engine_id() == engine) {
                return false;
            }
        }
        return true;
    });
}

Runtime::Counts Runtime::counts(const Engine * engine) const {
    std::lock_guard<std::mutex> lock(sched_->mutex);
    Counts c;
    for (const auto & job : sched_->jobs) {
        // a finished job leaves the list after the step that ended it
        if (job->engine_id() != engine || job->finished()) {
            continue;
        }
        if (c.active < job->engine().n_seq()) {
            ++c.active;
        } else {
            ++c.queued;
        }
    }
    return c;
}

// The jobs to advance next: of the session whose runnable job waited longest, every
// runnable job among its first n_seq (FIFO; later ones queue). A job whose event
// queue is full waits for its reader (it keeps its sequence meanwhile).
std::vector<std::shared_ptr<Job>> Runtime::pick_locked() {
    std::map<const Engine *, int> seen;
    const Engine * best = nullptr;
    uint64_t best_step = 0;
    // a queued job that was cancelled is ended at once (it holds no sequence)
    auto runnable = [](const Job & job, bool active) {
        return job.cancel_requested() || (active && job.has_room());
    };
    for (const auto & job : sched_->jobs) {
        const Engine * e = job->engine_id();
        const bool active = seen[e]++ < job->engine().n_seq();
        if (!runnable(*job, active)) {
            continue;
        }
        if (best == nullptr || job->last_step < best_step) {
            best = e;
            best_step = job->last_step;
        }
    }
    std::vector<std::shared_ptr<Job>> picked;
    if (best == nullptr) {
        return picked;
    }
    int n = 0;
    for (const auto & job : sched_->jobs) {
        if (job->engine_id() == best && runnable(*job, n++ < job->engine().n_seq())) {
            picked.push_back(job);
        }
    }
    return picked;
}

void Runtime::loop() {
    std::vector<std::shared_ptr<Job>> picked;
    std::vector<Job *> batch;
    for (;;) {
        {
            std::unique_lock<std::mutex> lock(sched_->mutex);
            // after stop, the jobs left (all cancelled by shutdown()) are stepped once
            // more, which ends each with its cancelled event and frees its sequence
            sched_->work.wait(lock, [&] {
                picked = pick_locked();
                return !picked.empty() || sched_->stop;
            });
            if (picked.empty()) {
                sched_->worker_done = true;
                sched_->idle.notify_all();
                return;
            }
            const uint64_t tick = ++sched_->tick;
            for (const auto & job : picked) {
                job->last_step = tick;
            }
            // deferred wake-ups of the other jobs go out before this step, so no
            // reader waits behind another session's step
            for (const auto & other : sched_->jobs) {
                if (std::find(picked.begin(), picked.end(), other) == picked.end()) {
                    other->flush_wake(true);
                }
            }
        }
        batch.clear();
        for (const auto & job : picked) {
            batch.push_back(job.get());
        }
        picked.front()->engine().step(batch);
        bool any_finished = false;
        for (const auto & job : picked) {
            job->flush_wake(false);
            any_finished = any_finished || job->finished();
        }
        if (any_finished) {
            std::lock_guard<std::mutex> lock(sched_->mutex);
            sched_->jobs.remove_if([](const std::shared_ptr<Job> & j) { return j->finished(); });
            sched_->idle.notify_all();
        }
        picked.clear();
    }
}

}  // namespace mtpstream

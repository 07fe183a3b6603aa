#include "runtime.hpp"

#include <unistd.h>

#include <set>

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
            for (const auto & other : sched_->jobs) {
                if (other->engine_id() == job->engine_id()) {
                    return Status::error(ErrorCode::busy,
                                         "the session is busy with another generation (wait=False)");
                }
            }
        }
        sched_->jobs.push_back(job);
    }
    sched_->work.notify_all();
    return Status::ok_status();
}

int Runtime::pending(const Engine * engine) const {
    std::lock_guard<std::mutex> lock(sched_->mutex);
    int n = 0;
    for (const auto & job : sched_->jobs) {
        n += job->engine_id() == engine ? 1 : 0;
    }
    return n;
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
        for (const auto & job : sched_->jobs) {
            if (job->engine_id() == engine) {
                return false;
            }
        }
        return true;
    });
}

// The runnable job that waited longest; only the oldest job of each session is
// eligible (FIFO per session), and a job whose queue is full waits for its reader.
std::shared_ptr<Job> Runtime::pick_locked() {
    std::set<const Engine *> seen;
    std::shared_ptr<Job> best;
    for (const auto & job : sched_->jobs) {
        if (!seen.insert(job->engine_id()).second) {
            continue;
        }
        if (!job->cancel_requested() && !job->has_room()) {
            continue;
        }
        if (!best || job->last_step < best->last_step) {
            best = job;
        }
    }
    return best;
}

void Runtime::loop() {
    for (;;) {
        std::shared_ptr<Job> job;
        {
            std::unique_lock<std::mutex> lock(sched_->mutex);
            sched_->work.wait(lock, [&] {
                if (sched_->stop) {
                    return true;
                }
                job = pick_locked();
                return job != nullptr;
            });
            if (sched_->stop) {
                return;
            }
            job->last_step = ++sched_->tick;
            // deferred wake-ups of the other jobs go out before this step, so no
            // reader waits behind another session's step
            for (const auto & other : sched_->jobs) {
                if (other != job) {
                    other->flush_wake(true);
                }
            }
        }
        if (job->cancel_requested()) {
            job->engine().finish_cancelled(*job);
        } else {
            job->engine().step(*job);
        }
        job->flush_wake(false);
        if (job->finished()) {
            std::lock_guard<std::mutex> lock(sched_->mutex);
            sched_->jobs.remove(job);
            sched_->idle.notify_all();
        }
    }
}

}  // namespace mtpstream

#include "job.hpp"

#include <sys/socket.h>
#include <unistd.h>

#include <chrono>


namespace mtpstream {

namespace {

// At most one coalesced wake-up per this many microseconds: a few tokens of a ~1 ms
// model, never noticeable in a stream; slower models wake on every token anyway.
constexpr int64_t kWakeCoalesceUs = 2500;

int64_t steady_us() {
    return std::chrono::duration_cast<std::chrono::microseconds>(
               std::chrono::steady_clock::now().time_since_epoch())
        .count();
}

}  // namespace

Job::Job(std::shared_ptr<Engine> engine, std::unique_ptr<Generation> generation, int wake_fd,
         std::size_t capacity, std::size_t reserve, std::function<void()> wake_worker)
    : engine_(std::move(engine)),
      generation_(std::move(generation)),
      wake_worker_(std::move(wake_worker)),
      wake_fd_(wake_fd),
      capacity_(capacity),
      reserve_(reserve) {}

Job::~Job() {
    if (wake_fd_ >= 0) {
        ::close(wake_fd_);
    }
}

void Job::wake() {
    if (wake_fd_ >= 0) {
        const char byte = 1;
        // non-blocking; if the socket buffer is full a wake-up is pending anyway
        (void) ::send(wake_fd_, &byte, 1, MSG_DONTWAIT | MSG_NOSIGNAL);
    }
}

void Job::push(Event ev) {
    const bool urgent = is_terminal(ev.kind);
    bool need_wake = false;
    {
        std::lock_guard<std::mutex> lock(mutex_);
        queue_.push_back(std::move(ev));
        size_.store(queue_.size());
        if (urgent) {
            // finished before the reader can see the terminal event, so that a reader
            // that got it never finds the job still running (stats, busy checks)
            finished_.store(true);
        }
        if (!woken_) {
            const int64_t now = steady_us();
            if (urgent || size_.load() + reserve_ > capacity_ || now - last_wake_us_ >= kWakeCoalesceUs) {
                need_wake = true;
                woken_ = true;
                wake_pending_ = false;
                last_wake_us_ = now;
            } else {
                wake_pending_ = true;
            }
        }
    }
    if (need_wake) {
        wake();
    }
}

void Job::flush_wake(bool force) {
    bool need_wake = false;
    {
        std::lock_guard<std::mutex> lock(mutex_);
        const int64_t now = steady_us();
        if (wake_pending_ && !woken_ && (force || now - last_wake_us_ >= kWakeCoalesceUs)) {
            need_wake = true;
            woken_ = true;
            wake_pending_ = false;
            last_wake_us_ = now;
        }
    }
    if (need_wake) {
        wake();
    }
}

std::vector<Event> Job::drain() {
    std::vector<Event> out;
    bool was_full;
    {
        std::lock_guard<std::mutex> lock(mutex_);
        was_full = size_.load() + reserve_ > capacity_;
        out.assign(std::make_move_iterator(queue_.begin()), std::make_move_iterator(queue_.end()));
        queue_.clear();
        size_.store(0);
        woken_ = false;
        wake_pending_ = false;  // everything queued is being delivered now
    }
    if (was_full) {
        wake_worker_();
    }
    return out;
}

void Job::request_cancel() {
    cancel_.store(true);
    wake_worker_();
}

}  // namespace mtpstream

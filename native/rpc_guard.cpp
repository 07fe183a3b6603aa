#include "rpc_guard.hpp"

#include <netinet/in.h>
#include <poll.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>

namespace mtpstream {

std::string WorkerLink::loss() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return loss_;
}

void WorkerLink::mark_lost(const std::string & why) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!lost_.load(std::memory_order_relaxed)) {
        loss_ = why;
        lost_.store(true, std::memory_order_release);
    }
}

void WorkerLink::watch_socket(int fd) {
    const auto set = [fd](int level, int name, int value) { setsockopt(fd, level, name, &value, sizeof(value)); };
    set(SOL_SOCKET, SO_KEEPALIVE, 1);
    set(IPPROTO_TCP, TCP_KEEPIDLE, 10);
    set(IPPROTO_TCP, TCP_KEEPINTVL, 5);
    set(IPPROTO_TCP, TCP_KEEPCNT, 4);
    set(IPPROTO_TCP, TCP_USER_TIMEOUT, kUserTimeoutMs);
}

bool WorkerLink::wait_readable(int fd, int ms) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
    for (;;) {
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
        pollfd p{fd, POLLIN, 0};
        const int rc = poll(&p, 1, static_cast<int>(std::max<int64_t>(left.count(), 0)));
        if (rc > 0 || (rc < 0 && errno != EINTR)) {
            return true;  // data, an error or a hang-up: the read that follows tells
        }
        if (rc == 0) {
            return false;
        }
    }
}

std::string no_answer(const std::string & cmd, int timeout_ms) {
    char secs[32];
    std::snprintf(secs, sizeof(secs), "%g", timeout_ms / 1000.0);
    return "no answer to " + cmd + " within " + secs + " s (rpc_timeout)";
}

std::string describe_losses(const std::vector<WorkerWatch> & watches) {
    std::string out;
    for (const WorkerWatch & w : watches) {
        if (w.link != nullptr && w.link->lost()) {
            out += (out.empty() ? "" : ", ") + w.worker + " (" + w.link->loss() + ")";
        }
    }
    return out.empty() ? out : "lost the RPC worker " + out;
}

bool any_lost(const std::vector<WorkerWatch> & watches) {
    for (const WorkerWatch & w : watches) {
        if (w.link != nullptr && w.link->lost()) {
            return true;
        }
    }
    return false;
}

}  // namespace mtpstream

#include "rpc_guard.hpp"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

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

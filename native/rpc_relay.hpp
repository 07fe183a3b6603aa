// The relay of rpc_guard.hpp, for where the socket hooks cannot be installed: ggml's
// RPC client connects to the relay on loopback and the relay forwards every message
// to the worker and back; once the worker is lost it answers the client itself.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include "rpc_guard.hpp"
#include "status.hpp"

namespace mtpstream {

class RpcRelay {
public:
    // The relay that new models loaded over `worker` ("host:port") use: the one opened
    // before unless it lost its worker, else a new one on a port this process has not
    // used (ggml keeps each endpoint it was given for the life of the process).
    // Relays are never destroyed: ggml may reconnect to an endpoint for as long as any
    // buffer on it lives. On failure nullptr, `status` filled.
    // Replies may take `reply_timeout_ms` (the latest load's value) before the worker
    // counts as lost.
    static std::shared_ptr<RpcRelay> for_worker(const std::string & worker, int reply_timeout_ms, Status & status);

    RpcRelay(const RpcRelay &) = delete;
    RpcRelay & operator=(const RpcRelay &) = delete;

    // What ggml's client connects to ("127.0.0.1:port").
    const std::string & endpoint() const { return endpoint_; }
    const std::string & worker() const { return worker_; }
    const std::shared_ptr<WorkerLink> & link() const { return link_; }
    bool lost() const { return link_->lost(); }

private:
    RpcRelay(std::string worker, int listen_fd, uint16_t port);

    void run();
    void serve(int client);

    const std::string worker_;
    const int listen_fd_;
    const std::string endpoint_;
    const std::shared_ptr<WorkerLink> link_ = std::make_shared<WorkerLink>();
    std::atomic<int> reply_timeout_ms_{WorkerLink::kReplyTimeoutMs};
};

}  // namespace mtpstream

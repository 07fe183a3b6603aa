// The relay in front of each RPC worker. ggml's RPC client connects to the relay on
// loopback and the relay forwards every message to the worker and back. llama.cpp's
// client ends the process when a connection to a worker breaks (ggml-rpc.cpp,
// RPC_STATUS_ASSERT on its dispatcher thread); with the relay in between, that
// connection never breaks: when the worker is lost (connection reset or closed, or no
// TCP answer for kUserTimeoutMs), the relay records the loss and answers the client
// itself from then on (allocations refused, reads as zeros, the rest acknowledged).
// The engine checks the loss after each decode and fails the calls that ran on it,
// so no token computed over a lost worker is ever emitted.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "status.hpp"

namespace mtpstream {

class RpcRelay {
public:
    // The relay that new models loaded over `worker` ("host:port") use: the one opened
    // before unless it lost its worker, else a new one on a port this process has not
    // used (ggml keeps each endpoint it was given for the life of the process).
    // Relays are never destroyed: ggml may reconnect to an endpoint for as long as any
    // buffer on it lives. On failure nullptr, `status` filled.
    static std::shared_ptr<RpcRelay> for_worker(const std::string & worker, Status & status);

    RpcRelay(const RpcRelay &) = delete;
    RpcRelay & operator=(const RpcRelay &) = delete;

    // What ggml's client connects to ("127.0.0.1:port").
    const std::string & endpoint() const { return endpoint_; }
    const std::string & worker() const { return worker_; }
    bool lost() const { return lost_.load(std::memory_order_acquire); }
    // Why the worker counts as lost ("" while it does not).
    std::string loss() const;

    // How long data sent to a worker may go unacknowledged before it counts as lost,
    // and the TCP keepalive that finds a silent host between messages.
    static constexpr int kUserTimeoutMs = 30000;

private:
    RpcRelay(std::string worker, int listen_fd, uint16_t port);

    void run();
    void serve(int client);
    void mark_lost(const std::string & why);

    const std::string worker_;
    const int listen_fd_;
    const std::string endpoint_;
    std::atomic<bool> lost_{false};
    mutable std::mutex mutex_;
    std::string loss_;
};

// "lost the RPC worker A (why), B (why)" for the relays that lost theirs; "" if none.
std::string describe_losses(const std::vector<std::shared_ptr<RpcRelay>> & relays);

}  // namespace mtpstream

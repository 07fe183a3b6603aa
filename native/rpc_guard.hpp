// How mtpstream keeps a lost RPC worker from ending the process. llama.cpp's RPC
// client aborts (ggml-rpc.cpp, RPC_STATUS_ASSERT on its dispatcher thread) when a
// send to or a receive from a worker fails. mtpstream stands between the client and
// its sockets, by one of two means:
// - the socket hooks (rpc_hooks.cpp, the default on Linux): the send, recv, connect
//   and close that libggml-rpc calls go through mtpstream's functions (its entries in
//   the library's global offset table), on the client's own thread, with no extra hop;
// - the relay (rpc_relay.cpp, where the hooks cannot be installed): ggml's client
//   connects to a relay on loopback that forwards to the worker.
// Either follows the protocol (rpc_protocol.hpp) and, once the worker is lost
// (connection reset or closed, or kUserTimeoutMs of unacknowledged data and failed
// keepalives), records why and answers the client itself. The engine checks the loss
// after each decode and fails the calls that ran on it, so no token computed over a
// lost worker is ever emitted.
#pragma once

#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace mtpstream {

// One connection of ggml's client to a worker, as far as its loss goes.
class WorkerLink {
public:
    virtual ~WorkerLink() = default;
    bool lost() const { return lost_.load(std::memory_order_acquire); }
    // Why the worker counts as lost ("" while it does not).
    std::string loss() const;
    // The first call wins.
    void mark_lost(const std::string & why);

    // How long data sent to a worker may go unacknowledged before it counts as lost
    // (TCP_USER_TIMEOUT), with the keepalive that finds a silent host between messages.
    static constexpr int kUserTimeoutMs = 30000;
    // Those socket options on a connected socket to a worker.
    static void watch_socket(int fd);
    // Waits up to `ms` for `fd` to have data (or an error or hang-up); false on timeout.
    static bool wait_readable(int fd, int ms);
    // The default of load_model's rpc_timeout: how long a reply may take.
    static constexpr int kReplyTimeoutMs = 300000;

private:
    std::atomic<bool> lost_{false};
    mutable std::mutex mutex_;
    std::string loss_;
};

// A worker of a model, as its user named it, and the link that carries its share.
struct WorkerWatch {
    std::string worker;
    std::shared_ptr<WorkerLink> link;
};

// "no answer to CMD within S s": why a worker that stopped answering counts as lost.
std::string no_answer(const std::string & cmd, int timeout_ms);

// "lost the RPC worker A (why), B (why)" for the watches whose link is lost; "" if none.
std::string describe_losses(const std::vector<WorkerWatch> & watches);
bool any_lost(const std::vector<WorkerWatch> & watches);

// Installs the socket hooks in libggml-rpc (once per process); false with `why_not`
// when they cannot be (no such library loaded, not an ELF x86-64/AArch64 object).
bool install_socket_hooks(std::string & why_not);

// The hooked connection ggml's client has open to `endpoint` ("host:port"), or null.
std::shared_ptr<WorkerLink> hooked_link(const std::string & endpoint);

// How long the replies of the next hooked connection to `endpoint` may take before
// its worker counts as lost (a worker alive but stopped still acknowledges data).
void set_hooked_reply_timeout(const std::string & endpoint, int ms);

}  // namespace mtpstream

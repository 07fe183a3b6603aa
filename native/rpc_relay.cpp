#include "rpc_relay.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <map>
#include <set>
#include <thread>

#include "fd_io.hpp"
#include "rpc_protocol.hpp"

namespace mtpstream {

namespace {

using rpc::Cmd;
using rpc::kAsRequested;
using rpc::kCapsSize;
using rpc::kNoReply;

constexpr size_t kChunk = 1 << 20;  // bytes moved per read/write of a large message
constexpr int kConnectTimeoutMs = 5000;

bool read_full(int fd, uint8_t * out, size_t n) {
    return move_all([fd](char * p, size_t k) { return recv(fd, p, k, 0); }, reinterpret_cast<char *>(out), n);
}

bool write_full(int fd, const uint8_t * data, size_t n) {
    auto * p = reinterpret_cast<char *>(const_cast<uint8_t *>(data));  // only read
    return move_all([fd](char * q, size_t k) { return send(fd, q, k, MSG_NOSIGNAL); }, p, n);
}

void set_option(int fd, int level, int name, int value) { setsockopt(fd, level, name, &value, sizeof(value)); }

std::string errno_text(const char * what) { return std::string(what) + ": " + std::strerror(errno); }

// A connected socket to `worker`, or -1 with `error` filled; connecting gives up after
// kConnectTimeoutMs. Keepalive and a user timeout make a host that went silent count
// as lost, as a reset connection does.
int connect_worker(const std::string & worker, std::string & error) {
    const size_t colon = worker.rfind(':');
    const std::string host = colon == std::string::npos ? worker : worker.substr(0, colon);
    const std::string port = colon == std::string::npos ? "" : worker.substr(colon + 1);
    addrinfo hints{};
    hints.ai_socktype = SOCK_STREAM;
    addrinfo * found = nullptr;
    if (getaddrinfo(host.c_str(), port.c_str(), &hints, &found) != 0 || found == nullptr) {
        error = "cannot resolve " + worker;
        return -1;
    }
    const int fd = socket(found->ai_family, found->ai_socktype | SOCK_CLOEXEC, found->ai_protocol);
    int rc = -1;
    if (fd >= 0) {
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL, 0) | O_NONBLOCK);
        rc = connect(fd, found->ai_addr, found->ai_addrlen);
        if (rc != 0 && errno == EINPROGRESS) {
            pollfd p{fd, POLLOUT, 0};
            int err = ETIMEDOUT;
            socklen_t len = sizeof(err);
            if (poll(&p, 1, kConnectTimeoutMs) == 1) {
                getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
            }
            errno = err;
            rc = err == 0 ? 0 : -1;
        }
    }
    freeaddrinfo(found);
    if (rc != 0) {
        error = errno_text("cannot connect");
        if (fd >= 0) {
            close(fd);
        }
        return -1;
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL, 0) & ~O_NONBLOCK);
    set_option(fd, IPPROTO_TCP, TCP_NODELAY, 1);
    WorkerLink::watch_socket(fd);
    return fd;
}

// A listening socket on 127.0.0.1 at a port not in `used` (which it joins), or -1.
int listen_loopback(std::set<uint16_t> & used, uint16_t & port, std::string & error) {
    std::vector<int> taken;  // sockets at ports used before, held until a new one is found
    int out = -1;
    for (int attempt = 0; attempt < 64 && out < 0; ++attempt) {
        const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        sockaddr_in addr{};
        addr.sin_family = AF_INET;
        addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        socklen_t len = sizeof(addr);
        if (fd < 0 || bind(fd, reinterpret_cast<sockaddr *>(&addr), sizeof(addr)) != 0 || listen(fd, 4) != 0 ||
            getsockname(fd, reinterpret_cast<sockaddr *>(&addr), &len) != 0) {
            error = errno_text("cannot listen on 127.0.0.1");
            if (fd >= 0) {
                close(fd);
            }
            break;
        }
        port = ntohs(addr.sin_port);
        if (used.insert(port).second) {
            out = fd;
        } else {
            taken.push_back(fd);
        }
    }
    for (int fd : taken) {
        close(fd);
    }
    return out;
}

struct Registry {
    std::mutex mutex;
    std::map<std::string, std::shared_ptr<RpcRelay>> current;  // by worker
    std::set<uint16_t> ports;
};

Registry & registry() {
    static Registry * r = new Registry();  // never destroyed, as the relays
    return *r;
}

// One client connection's traffic: forwards while the worker answers, and stands in
// for it once it is lost.
class Link {
public:
    Link(int client, int upstream, WorkerLink & link, int reply_timeout_ms)
        : client_(client), upstream_(upstream), link_(link), reply_timeout_ms_(reply_timeout_ms), buf_(kChunk + 16) {}
    ~Link() {
        if (upstream_ >= 0) {
            close(upstream_);
        }
    }

    // Serves requests until the client closes the connection.
    void run() {
        while (request()) {
        }
    }

private:
    bool live() const { return upstream_ >= 0 && !link_.lost(); }

    void fail(const std::string & why) {
        if (upstream_ >= 0) {
            close(upstream_);
            upstream_ = -1;
        }
        link_.mark_lost(why);
    }

    bool request();
    bool reply(Cmd cmd, int64_t size);
    
    const int client_;
    int upstream_;
    WorkerLink & link_;
    const int reply_timeout_ms_;
    std::vector<uint8_t> buf_;
    rpc::LastReplies last_reply_;
};

bool Link::request() {
    uint8_t head[9];
    if (!read_full(client_, head, sizeof(head))) {
        return false;  // ggml closed the connection (its last buffer on the worker is gone)
    }
    const Cmd cmd = static_cast<Cmd>(head[0]);
    uint64_t size = 0;
    std::memcpy(&size, head + 1, sizeof(size));
    if (live() && !write_full(upstream_, head, sizeof(head))) {
        fail(errno_text(("sending " + rpc::cmd_name(cmd)).c_str()));
    }
    uint64_t asked = 0;  // GET_TENSOR's reply size: the last field of its request
    for (uint64_t left = size; left > 0;) {
        const size_t n = static_cast<size_t>(std::min<uint64_t>(left, kChunk));
        if (!read_full(client_, buf_.data(), n)) {
            return false;
        }
        if (cmd == Cmd::hello) {
            std::memset(buf_.data(), 0, n);  // no transport upgrade: the relay speaks TCP
        }
        if (cmd == Cmd::get_tensor && left == n && n >= sizeof(asked)) {
            std::memcpy(&asked, buf_.data() + n - sizeof(asked), sizeof(asked));
        }
        if (live() && !write_full(upstream_, buf_.data(), n)) {
            fail(errno_text(("sending " + rpc::cmd_name(cmd)).c_str()));
        }
        left -= n;
    }
    const int64_t want = rpc::reply_size(cmd);
    if (want == kNoReply) {
        return true;
    }
    return reply(cmd, want == kAsRequested ? static_cast<int64_t>(asked) : want);
}

bool Link::reply(Cmd cmd, int64_t size) {
    const uint64_t total = static_cast<uint64_t>(size);
    if (live() && !WorkerLink::wait_readable(upstream_, reply_timeout_ms_)) {
        fail(no_answer(rpc::cmd_name(cmd), reply_timeout_ms_));
    }
    if (live()) {
        uint64_t got = 0;
        if (!read_full(upstream_, reinterpret_cast<uint8_t *>(&got), sizeof(got))) {
            fail(errno_text(("awaiting the reply to " + rpc::cmd_name(cmd)).c_str()));
        } else if (got != total) {
            fail("the reply to " + rpc::cmd_name(cmd) + " has " + std::to_string(got) + " bytes, not " +
                 std::to_string(total));
        }
    }
    if (!write_full(client_, reinterpret_cast<const uint8_t *>(&total), sizeof(total))) {
        return false;
    }
    if (!live()) {
        const std::vector<uint8_t> out = rpc::stand_in(cmd, total, last_reply_);
        return write_full(client_, out.data(), out.size());
    }
    for (uint64_t left = total; left > 0;) {
        const size_t n = static_cast<size_t>(std::min<uint64_t>(left, kChunk));
        if (live() && !read_full(upstream_, buf_.data(), n)) {
            fail(errno_text(("reading the reply to " + rpc::cmd_name(cmd)).c_str()));
        }
        if (!live()) {
            std::memset(buf_.data(), 0, n);  // the rest of a reply cut short reads as zeros
        }
        if (cmd == Cmd::hello && n > 4) {
            std::memset(buf_.data() + 4, 0, std::min(n, 4 + kCapsSize) - 4);  // as the request's
        }
        if (total <= 16 && live()) {
            last_reply_[static_cast<size_t>(cmd)].assign(buf_.begin(), buf_.begin() + static_cast<ptrdiff_t>(n));
        }
        if (!write_full(client_, buf_.data(), n)) {
            return false;
        }
        left -= n;
    }
    return true;
}

}  // namespace

std::shared_ptr<RpcRelay> RpcRelay::for_worker(const std::string & worker, int reply_timeout_ms, Status & status) {
    Registry & r = registry();
    std::lock_guard<std::mutex> lock(r.mutex);
    auto it = r.current.find(worker);
    if (it != r.current.end() && !it->second->lost()) {
        it->second->reply_timeout_ms_.store(reply_timeout_ms);
        return it->second;
    }
    uint16_t port = 0;
    std::string error;
    const int fd = listen_loopback(r.ports, port, error);
    if (fd < 0) {
        status = Status::error(ErrorCode::model_load, "cannot open the relay to the RPC worker " + worker + ": " + error);
        return nullptr;
    }
    std::shared_ptr<RpcRelay> relay(new RpcRelay(worker, fd, port));
    relay->reply_timeout_ms_.store(reply_timeout_ms);
    r.current[worker] = relay;
    std::thread([relay] { relay->run(); }).detach();
    return relay;
}

RpcRelay::RpcRelay(std::string worker, int listen_fd, uint16_t port)
    : worker_(std::move(worker)), listen_fd_(listen_fd), endpoint_("127.0.0.1:" + std::to_string(port)) {}

void RpcRelay::run() {
    for (;;) {
        const int client = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
        if (client < 0) {
            if (errno != EINTR && errno != ECONNABORTED) {
                usleep(100 * 1000);
            }
            continue;
        }
        set_option(client, IPPROTO_TCP, TCP_NODELAY, 1);
        serve(client);
        close(client);
    }
}

void RpcRelay::serve(int client) {
    std::string error;
    const int upstream = lost() ? -1 : connect_worker(worker_, error);
    if (upstream < 0 && !lost()) {
        link_->mark_lost(error);
    }
    Link(client, upstream, *link_, reply_timeout_ms_.load()).run();
}

}  // namespace mtpstream

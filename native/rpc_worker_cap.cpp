#include "rpc_worker_cap.hpp"

#include <sys/socket.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <memory>
#include <mutex>
#include <unordered_map>

#include "rpc_protocol.hpp"

namespace mtpstream {

namespace {

// A size no device can allocate: the worker's allocation fails and it answers with a
// null buffer, as for any allocation its device refuses.
constexpr uint64_t kRefused = uint64_t{1} << 62;
constexpr size_t kAllocRequest = 12;  // | device (4) | size (8) |
constexpr size_t kPair = 16;          // two u64: the replies followed here

uint64_t u64_at(const uint8_t * p) {
    uint64_t v = 0;
    std::memcpy(&v, p, sizeof(v));
    return v;
}

// The worker's side of one connection: the requests it reads and the replies it sends.
struct Conn {
    enum class Stage { cmd, size, payload } stage = Stage::cmd;
    rpc::Cmd cmd = rpc::Cmd::count;
    uint8_t size_bytes[8] = {};
    size_t size_have = 0;
    uint64_t payload_left = 0;
    uint8_t payload[kPair] = {};
    size_t payload_have = 0;
    size_t reply_sent = 0;  // bytes of the current request's reply sent so far
    uint64_t held = 0;      // bytes of the buffers this connection holds
    std::unordered_map<uint64_t, uint64_t> buffers;

    void request_done(uint8_t * alloc_payload, uint64_t cap);
    void read(uint8_t * data, size_t got, uint64_t cap);
};

// ALLOC_BUFFER over the cap becomes a refused size (in the worker's own buffer, read
// whole: worker_cap_wants_whole); FREE_BUFFER gives its buffer's bytes back.
void Conn::request_done(uint8_t * alloc_payload, uint64_t cap) {
    if (cmd == rpc::Cmd::alloc_buffer && alloc_payload != nullptr && payload_have == kAllocRequest) {
        const uint64_t size = u64_at(payload + 4);
        if (size > cap || held > cap - size) {
            std::memcpy(alloc_payload + 4, &kRefused, sizeof(kRefused));
        }
    } else if (cmd == rpc::Cmd::free_buffer && payload_have >= sizeof(uint64_t)) {
        auto it = buffers.find(u64_at(payload));
        if (it != buffers.end()) {
            held -= std::min(held, it->second);
            buffers.erase(it);
        }
    }
    stage = Stage::cmd;
}

void Conn::read(uint8_t * data, size_t got, uint64_t cap) {
    size_t at = 0;
    while (at < got) {
        if (stage == Stage::cmd) {
            cmd = static_cast<rpc::Cmd>(data[at++]);
            stage = Stage::size;
            size_have = 0;
            reply_sent = 0;  // what the worker sends next answers this request
            continue;
        }
        if (stage == Stage::size) {
            const size_t take = std::min(sizeof(size_bytes) - size_have, got - at);
            std::memcpy(size_bytes + size_have, data + at, take);
            size_have += take;
            at += take;
            if (size_have == sizeof(size_bytes)) {
                payload_left = u64_at(size_bytes);
                payload_have = 0;
                stage = Stage::payload;
                if (payload_left == 0) {
                    request_done(nullptr, cap);
                }
            }
            continue;
        }
        const size_t take = static_cast<size_t>(std::min<uint64_t>(payload_left, got - at));
        const bool whole = payload_have == 0 && take == payload_left;
        const size_t keep = std::min(take, kPair - std::min(kPair, payload_have));
        if (keep > 0) {
            std::memcpy(payload + payload_have, data + at, keep);
        }
        payload_have += take;
        payload_left -= take;
        if (payload_left == 0) {
            request_done(whole ? data + at : nullptr, cap);
        }
        at += take;
    }
}

struct Caps {
    std::mutex mutex;
    std::unordered_map<int, std::shared_ptr<Conn>> by_fd;
};

Caps & caps() {
    static Caps * c = new Caps();  // never destroyed: the worker's thread may call in at exit
    return *c;
}

std::atomic<uint64_t> g_cap{0};

std::shared_ptr<Conn> conn_of(int fd) {
    Caps & c = caps();
    std::lock_guard<std::mutex> lock(c.mutex);
    std::shared_ptr<Conn> & conn = c.by_fd[fd];
    if (conn == nullptr) {
        conn = std::make_shared<Conn>();
    }
    return conn;
}

}  // namespace

void set_worker_mem_cap(uint64_t bytes) { g_cap = bytes; }

bool worker_cap_active() { return g_cap.load() > 0; }

bool worker_cap_wants_whole(int fd, size_t n) {
    std::shared_ptr<Conn> conn = conn_of(fd);
    return conn->stage == Conn::Stage::payload && conn->cmd == rpc::Cmd::alloc_buffer && conn->payload_have == 0 &&
           conn->payload_left == n && n == kAllocRequest;
}

void worker_cap_read(int fd, uint8_t * data, size_t got) { conn_of(fd)->read(data, got, g_cap.load()); }

// The replies followed: ALLOC_BUFFER's | remote_ptr | remote_size | (what the connection
// now holds) and GET_DEVICE_MEMORY's | free | total | (rewritten to the cap).
bool worker_cap_send(int fd, const uint8_t * data, size_t n, uint8_t * out, size_t out_size) {
    std::shared_ptr<Conn> conn = conn_of(fd);
    const bool payload = conn->reply_sent == sizeof(uint64_t) && n == kPair && out_size >= kPair;
    conn->reply_sent += n;
    const uint64_t cap = g_cap.load();
    if (payload && conn->cmd == rpc::Cmd::alloc_buffer) {
        const uint64_t ptr = u64_at(data);
        if (ptr != 0) {
            conn->held += u64_at(data + 8);
            conn->buffers[ptr] = u64_at(data + 8);
        }
    } else if (payload && conn->cmd == rpc::Cmd::get_device_memory) {
        const uint64_t left = cap > conn->held ? cap - conn->held : 0;
        const uint64_t free = std::min(u64_at(data), left);
        const uint64_t total = std::min(u64_at(data + 8), cap);
        std::memcpy(out, &free, sizeof(free));
        std::memcpy(out + 8, &total, sizeof(total));
        return true;
    }
    return false;
}

void worker_cap_closed(int fd) {
    Caps & c = caps();
    std::lock_guard<std::mutex> lock(c.mutex);
    c.by_fd.erase(fd);
}

}  // namespace mtpstream

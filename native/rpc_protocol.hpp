// What mtpstream knows of llama.cpp's RPC protocol (major version 7, ggml-rpc.h): the
// commands, which have a reply and of what size, and what a stand-in for a lost worker
// answers. A request is | command (1 byte) | size (8) | payload |, a reply
// | size (8) | payload |; the client sends one request at a time and waits for its
// reply, if it has one, before the next.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

namespace mtpstream::rpc {

enum class Cmd : uint8_t {
    alloc_buffer = 0,
    get_alignment,
    get_max_size,
    buffer_get_base,
    free_buffer,
    buffer_clear,
    set_tensor,
    set_tensor_hash,
    get_tensor,
    copy_tensor,
    graph_compute,
    get_device_memory,
    init_tensor,
    get_alloc_size,
    hello,
    device_count,
    graph_recompute,
    memset_tensor,
    count,
};

constexpr size_t kCapsSize = 24;      // the transport capabilities in HELLO
constexpr int64_t kNoReply = -1;      // the command has no reply
constexpr int64_t kAsRequested = -2;  // GET_TENSOR: the last 8 bytes of its request

// The payload size of `cmd`'s reply: a size, kNoReply or kAsRequested.
int64_t reply_size(Cmd cmd);
std::string cmd_name(Cmd cmd);

// The small replies last seen per command (alignment, sizes, base address, device
// count), which a stand-in repeats.
using LastReplies = std::array<std::vector<uint8_t>, static_cast<size_t>(Cmd::count)>;

// The reply payload a stand-in for a lost worker gives `cmd`: no allocation, zeros
// for reads and memory, hashes "found" and copies "done" (so no data follows them),
// the protocol's version for a handshake, and the worker's last answer (`last`) for
// the fixed queries.
std::vector<uint8_t> stand_in(Cmd cmd, size_t size, const LastReplies & last);

// Follows the requests a client writes, byte by byte as they go out, and the replies
// it reads; stands in for the replies of a lost worker from the byte the real reply
// stopped at.
class Exchange {
public:
    // `n` bytes the client wrote.
    void sent(const uint8_t * data, size_t n);
    // `n` bytes the client read (of the reply it waits for).
    void received(const uint8_t * data, size_t n);
    // Stand-in bytes for the reply the client waits for, up to `n`, into `out`; 0 when
    // the client waits for no reply.
    size_t stand_in_reply(uint8_t * out, size_t n);
    // The name of the command whose reply the client waits for ("a reply" if none).
    std::string awaited() const;

private:
    struct Pending {
        Cmd cmd;
        uint64_t size;
    };
    void request_done();

    uint8_t head_[9] = {};
    size_t head_have_ = 0;
    uint64_t payload_left_ = 0;
    uint8_t tail_[8] = {};  // the request's last 8 bytes
    std::vector<Pending> pending_;
    uint64_t reply_pos_ = 0;  // bytes of the front reply the client has read (its size first)
    std::vector<uint8_t> reply_bytes_;  // the front reply's payload, while small
    std::vector<uint8_t> stand_in_;     // the front reply's stand-in, size first
    LastReplies last_;
};

}  // namespace mtpstream::rpc

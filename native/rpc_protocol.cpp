#include "rpc_protocol.hpp"

#include <algorithm>
#include <cstring>

#include "ggml-rpc.h"

// the command table and reply sizes below are those of this major version
static_assert(RPC_PROTO_MAJOR_VERSION == 7, "llama.cpp's RPC protocol changed: review rpc_protocol.cpp");

namespace mtpstream::rpc {

int64_t reply_size(Cmd cmd) {
    switch (cmd) {
        case Cmd::alloc_buffer:       // remote pointer, size
        case Cmd::get_device_memory:  // free, total
            return 16;
        case Cmd::get_alignment:
        case Cmd::get_max_size:
        case Cmd::buffer_get_base:
        case Cmd::get_alloc_size:
            return 8;
        case Cmd::set_tensor_hash:  // found
        case Cmd::copy_tensor:      // done
            return 1;
        case Cmd::get_tensor:
            return kAsRequested;
        case Cmd::hello:  // major, minor, patch, padding, capabilities
            return 4 + kCapsSize;
        case Cmd::device_count:
            return 4;
        default:
            return kNoReply;
    }
}

std::string cmd_name(Cmd cmd) {
    static const char * const names[] = {"ALLOC_BUFFER",    "GET_ALIGNMENT",  "GET_MAX_SIZE",  "BUFFER_GET_BASE",
                                         "FREE_BUFFER",     "BUFFER_CLEAR",   "SET_TENSOR",    "SET_TENSOR_HASH",
                                         "GET_TENSOR",      "COPY_TENSOR",    "GRAPH_COMPUTE", "GET_DEVICE_MEMORY",
                                         "INIT_TENSOR",     "GET_ALLOC_SIZE", "HELLO",         "DEVICE_COUNT",
                                         "GRAPH_RECOMPUTE", "MEMSET_TENSOR"};
    const auto i = static_cast<size_t>(cmd);
    return i < static_cast<size_t>(Cmd::count) ? names[i] : "command " + std::to_string(i);
}

std::vector<uint8_t> stand_in(Cmd cmd, size_t size, const LastReplies & last) {
    std::vector<uint8_t> out(size, 0);
    switch (cmd) {
        case Cmd::alloc_buffer:
        case Cmd::get_tensor:
        case Cmd::get_device_memory:
            break;
        case Cmd::set_tensor_hash:
        case Cmd::copy_tensor:
            out[0] = 1;
            break;
        case Cmd::hello:
            out[0] = RPC_PROTO_MAJOR_VERSION;
            break;
        default: {
            const auto i = static_cast<size_t>(cmd);
            if (i < last.size() && last[i].size() == size) {
                out = last[i];
            }
        }
    }
    return out;
}

// ---------------------------------------------------------------- Exchange

void Exchange::sent(const uint8_t * data, size_t n) {
    while (n > 0) {
        if (head_have_ < sizeof(head_)) {
            const size_t take = std::min(sizeof(head_) - head_have_, n);
            std::memcpy(head_ + head_have_, data, take);
            head_have_ += take;
            data += take;
            n -= take;
            if (head_have_ == sizeof(head_)) {
                std::memcpy(&payload_left_, head_ + 1, sizeof(payload_left_));
                std::memset(tail_, 0, sizeof(tail_));
                if (payload_left_ == 0) {
                    request_done();
                }
            }
            continue;
        }
        const size_t take = static_cast<size_t>(std::min<uint64_t>(payload_left_, n));
        if (take >= sizeof(tail_)) {
            std::memcpy(tail_, data + take - sizeof(tail_), sizeof(tail_));
        } else {
            std::memmove(tail_, tail_ + take, sizeof(tail_) - take);
            std::memcpy(tail_ + sizeof(tail_) - take, data, take);
        }
        payload_left_ -= take;
        data += take;
        n -= take;
        if (payload_left_ == 0) {
            request_done();
        }
    }
}

void Exchange::request_done() {
    const Cmd cmd = static_cast<Cmd>(head_[0]);
    head_have_ = 0;
    const int64_t want = reply_size(cmd);
    if (want == kNoReply) {
        return;
    }
    uint64_t size = static_cast<uint64_t>(want);
    if (want == kAsRequested) {
        std::memcpy(&size, tail_, sizeof(size));
    }
    pending_.push_back({cmd, size});
}

void Exchange::received(const uint8_t * data, size_t n) {
    while (n > 0 && !pending_.empty()) {
        const Pending p = pending_.front();
        const uint64_t total = sizeof(uint64_t) + p.size;
        const size_t take = static_cast<size_t>(std::min<uint64_t>(total - reply_pos_, n));
        if (p.size <= 16) {  // keep a small reply's payload (after its size)
            for (size_t i = 0; i < take; ++i) {
                if (reply_pos_ + i >= sizeof(uint64_t)) {
                    reply_bytes_.push_back(data[i]);
                }
            }
        }
        reply_pos_ += take;
        data += take;
        n -= take;
        if (reply_pos_ == total) {
            if (p.size <= 16 && reply_bytes_.size() == p.size) {
                last_[static_cast<size_t>(p.cmd)] = reply_bytes_;
            }
            reply_bytes_.clear();
            stand_in_.clear();
            reply_pos_ = 0;
            pending_.erase(pending_.begin());
        }
    }
}

std::string Exchange::awaited() const { return pending_.empty() ? "a reply" : cmd_name(pending_.front().cmd); }

size_t Exchange::stand_in_reply(uint8_t * out, size_t n) {
    if (pending_.empty()) {
        return 0;
    }
    const Pending p = pending_.front();
    if (stand_in_.empty()) {
        stand_in_.resize(sizeof(uint64_t));
        std::memcpy(stand_in_.data(), &p.size, sizeof(uint64_t));
        const std::vector<uint8_t> body = stand_in(p.cmd, static_cast<size_t>(p.size), last_);
        stand_in_.insert(stand_in_.end(), body.begin(), body.end());
    }
    const size_t take = static_cast<size_t>(std::min<uint64_t>(stand_in_.size() - reply_pos_, n));
    std::memcpy(out, stand_in_.data() + reply_pos_, take);
    received(out, take);  // consumes what was read of the stand-in (and may clear it)
    return take;
}

}  // namespace mtpstream::rpc

// The grammar host's wire format (see grammar_host.hpp), shared by the engine's
// side and the host process. Every request gets one reply, in order.
//   request: u8 op, u32 id, u32 n, then n payload bytes
//   reply:   u8 status, u32 n, then n payload bytes
// Payloads (integers little-endian, as the host and the engine run on one machine):
//   ready (the host's first reply): i32 n_vocab
//   open:   u32 n_triggers, n_triggers x (u32 len, bytes), then the grammar text
//           -> ok: i64 cpu_us | error: the parse error line
//   apply:  -> ok: i64 cpu_us, then ceil(n_vocab / 8) bytes, bit t set when token t is allowed
//   accept: i32 token -> ok / dropped: i64 cpu_us (dropped: a lazy grammar gave up
//           and the call goes on unconstrained) | error: text
//   close:  -> ok
#pragma once

#include <cstdint>
#include <cstring>
#include <string>

namespace mtpstream::wire {

enum class Op : uint8_t { open = 1, apply = 2, accept = 3, close = 4 };
enum class Status : uint8_t { ok = 0, error = 1, dropped = 2 };

constexpr size_t kRequestHeader = 9;  // op, id, n
constexpr size_t kReplyHeader = 5;    // status, n
constexpr uint32_t kMaxPayload = 64u << 20;

class Writer {
public:
    template <typename T>
    Writer & put(T v) {
        const size_t at = buf_.size();
        buf_.resize(at + sizeof v);
        std::memcpy(&buf_[at], &v, sizeof v);
        return *this;
    }
    Writer & bytes(const std::string & s) {
        buf_ += s;
        return *this;
    }
    Writer & text(const std::string & s) { return put(static_cast<uint32_t>(s.size())).bytes(s); }
    const std::string & data() const { return buf_; }

private:
    std::string buf_;
};

class Reader {
public:
    explicit Reader(const std::string & buf) : buf_(buf) {}
    template <typename T>
    bool get(T & v) {
        if (buf_.size() - at_ < sizeof v) {
            return false;
        }
        std::memcpy(&v, buf_.data() + at_, sizeof v);
        at_ += sizeof v;
        return true;
    }
    bool text(std::string & s) {
        uint32_t n = 0;
        if (!get(n) || buf_.size() - at_ < n) {
            return false;
        }
        s.assign(buf_, at_, n);
        at_ += n;
        return true;
    }
    std::string rest() const { return buf_.substr(at_); }
    size_t left() const { return buf_.size() - at_; }
    const char * here() const { return buf_.data() + at_; }

private:
    const std::string & buf_;
    size_t at_ = 0;
};

inline std::string header(uint8_t tag, uint32_t n) {
    Writer w;
    w.put(tag).put(n);
    return w.data();
}

}  // namespace mtpstream::wire

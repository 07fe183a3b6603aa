#include "text_stream.hpp"

#include <algorithm>
#include <cstddef>
#include <utility>

namespace mtpstream {

namespace {

const char * const replacement = "\xEF\xBF\xBD";  // U+FFFD

// Length of the well-formed UTF-8 sequence starting at s[i] (Unicode Table 3-7);
// 0 if s ends inside a sequence that could still become well-formed; -m if
// ill-formed, where m >= 1 is the length of the maximal subpart to replace with
// one U+FFFD (the W3C/Unicode practice Python's decoder also follows).
int sequence_length(const std::string & s, std::size_t i) {
    const auto b0 = static_cast<unsigned char>(s[i]);
    if (b0 < 0x80) {
        return 1;
    }
    int len;
    unsigned char lo = 0x80;
    unsigned char hi = 0xBF;
    if (b0 >= 0xC2 && b0 <= 0xDF) {
        len = 2;
    } else if (b0 >= 0xE0 && b0 <= 0xEF) {
        len = 3;
        if (b0 == 0xE0) {
            lo = 0xA0;
        } else if (b0 == 0xED) {
            hi = 0x9F;
        }
    } else if (b0 >= 0xF0 && b0 <= 0xF4) {
        len = 4;
        if (b0 == 0xF0) {
            lo = 0x90;
        } else if (b0 == 0xF4) {
            hi = 0x8F;
        }
    } else {
        return -1;
    }
    for (int k = 1; k < len; ++k) {
        if (i + static_cast<std::size_t>(k) >= s.size()) {
            return 0;
        }
        const auto b = static_cast<unsigned char>(s[i + static_cast<std::size_t>(k)]);
        const unsigned char l = k == 1 ? lo : 0x80;
        const unsigned char h = k == 1 ? hi : 0xBF;
        if (b < l || b > h) {
            return -k;
        }
    }
    return len;
}

}  // namespace

TextStream::TextStream(std::vector<std::string> stops) : stops_(std::move(stops)) {
    stops_.erase(std::remove(stops_.begin(), stops_.end(), std::string()), stops_.end());
}

std::string TextStream::push(const std::string & bytes) {
    if (stopped_) {
        return "";
    }
    raw_ += bytes;
    std::size_t i = 0;
    while (i < raw_.size()) {
        const int n = sequence_length(raw_, i);
        if (n == 0) {
            break;  // wait for the rest of this character
        }
        if (n < 0) {
            held_ += replacement;
            i += static_cast<std::size_t>(-n);
        } else {
            held_.append(raw_, i, static_cast<std::size_t>(n));
            i += static_cast<std::size_t>(n);
        }
    }
    raw_.erase(0, i);
    return release_held();
}

std::string TextStream::release_held() {
    if (stops_.empty()) {
        return std::exchange(held_, std::string());
    }
    std::size_t first = std::string::npos;
    const std::string * hit = nullptr;
    for (const auto & stop : stops_) {
        const std::size_t at = held_.find(stop);
        if (at != std::string::npos && at < first) {
            first = at;
            hit = &stop;
        }
    }
    if (hit != nullptr) {
        stopped_ = true;
        matched_ = *hit;
        std::string out = held_.substr(0, first);
        held_.clear();
        raw_.clear();
        return out;
    }
    // Keep the longest suffix that is a proper prefix of some stop string.
    std::size_t keep = 0;
    for (const auto & stop : stops_) {
        const std::size_t max_len = std::min(stop.size() - 1, held_.size());
        for (std::size_t len = max_len; len > keep; --len) {
            if (held_.compare(held_.size() - len, len, stop, 0, len) == 0) {
                keep = len;
                break;
            }
        }
    }
    std::string out = held_.substr(0, held_.size() - keep);
    held_.erase(0, held_.size() - keep);
    return out;
}

std::string TextStream::flush() {
    if (stopped_) {
        return "";
    }
    std::string out = std::exchange(held_, std::string());
    if (!raw_.empty()) {
        out += replacement;
        raw_.clear();
    }
    return out;
}

}  // namespace mtpstream

// Monotonic microseconds for the engine's phase timings.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>

namespace mtpstream {

inline int64_t now_us() {
    return std::chrono::duration_cast<std::chrono::microseconds>(
               std::chrono::steady_clock::now().time_since_epoch())
        .count();
}

inline uint64_t elapsed(int64_t since) { return static_cast<uint64_t>(std::max<int64_t>(0, now_us() - since)); }

}  // namespace mtpstream

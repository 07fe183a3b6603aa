// Monotonic microseconds for the engine's phase timings.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <ctime>

namespace mtpstream {

inline int64_t now_us() {
    return std::chrono::duration_cast<std::chrono::microseconds>(
               std::chrono::steady_clock::now().time_since_epoch())
        .count();
}

// CPU microseconds the calling thread has used (a step's own cost, whatever the load
// of the machine); wall time where the platform has no thread clock.
inline int64_t thread_cpu_us() {
#ifdef CLOCK_THREAD_CPUTIME_ID
    timespec ts{};
    if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) == 0) {
        return static_cast<int64_t>(ts.tv_sec) * 1000000 + static_cast<int64_t>(ts.tv_nsec) / 1000;
    }
#endif
    return now_us();
}

inline uint64_t elapsed(int64_t since) { return static_cast<uint64_t>(std::max<int64_t>(0, now_us() - since)); }

}  // namespace mtpstream

// The loop that moves all of a buffer through a descriptor, whatever the call.
#pragma once

#include <sys/types.h>

#include <cerrno>
#include <cstddef>

namespace mtpstream {

// Calls `step(p, n)` (a read, write, send or recv on a blocking descriptor, returning
// what that call returns) until all `n` bytes at `p` are moved; false at the
// descriptor's end or on an error (an interrupted call is repeated).
template <typename Step>
bool move_all(Step step, char * p, size_t n) {
    while (n > 0) {
        const ssize_t k = step(p, n);
        if (k < 0 && errno == EINTR) {
            continue;
        }
        if (k <= 0) {
            return false;
        }
        p += k;
        n -= static_cast<size_t>(k);
    }
    return true;
}

}  // namespace mtpstream

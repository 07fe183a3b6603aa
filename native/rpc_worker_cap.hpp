// `mtpstream rpc-server --mem MiB`: a worker that offers at most that much memory.
// llama.cpp 0.3.36's rpc-server reports its device's memory and allocates whatever a
// client asks. With a cap, the worker's side of each connection is followed through the
// same socket hooks as the client's (rpc_hooks.cpp): GET_DEVICE_MEMORY answers at most
// the cap less what the connection holds (so a client's default split, by free memory,
// follows it), and an ALLOC_BUFFER that would take the connection past the cap is
// turned into one the device cannot satisfy, which the worker refuses the usual way
// (a null buffer: the client's load fails, and the worker serves its next client).
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <cstdint>

namespace mtpstream {

// Sets the cap (bytes; 0: none) for the connections this process serves from now on.
void set_worker_mem_cap(uint64_t bytes);

// The worker's side of a connection, while a cap is set (worker_cap_active):
// - worker_cap_wants_whole: whether the read of `n` bytes the worker is about to make
//   must be whole (MSG_WAITALL): an ALLOC_BUFFER request the cap may rewrite;
// - worker_cap_read: `got` bytes the worker read into `data` (rewritten there when an
//   allocation is refused);
// - worker_cap_send: `n` bytes the worker is about to send; true with a rewritten copy
//   in `out` (a GET_DEVICE_MEMORY reply) to send instead;
// - worker_cap_closed: the connection's socket is closed.
bool worker_cap_active();
bool worker_cap_wants_whole(int fd, size_t n);
void worker_cap_read(int fd, uint8_t * data, size_t got);
bool worker_cap_send(int fd, const uint8_t * data, size_t n, uint8_t * out, size_t out_size);
void worker_cap_closed(int fd);

}  // namespace mtpstream

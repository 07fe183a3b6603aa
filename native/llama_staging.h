// Declarations of llama.cpp "staging" functions that the MTP loop needs.
//
// libllama (as built by llama-cpp-python 0.3.36) exports these symbols with C++
// linkage, but they live in llama.cpp's internal header src/llama-ext.h, which is
// not installed with the package. We declare exactly the ones we call; the
// signatures must match the vendored llama.cpp of the pinned llama-cpp-python.
#pragma once

#include "llama.h"

// Ask a context to export "nextn" hidden rows (the final hidden state a NextN/MTP
// head consumes). masked=false: a row for every batch entry; true: only for
// entries whose output flag is set.
LLAMA_API void llama_set_embeddings_nextn(struct llama_context * ctx, bool value, bool masked);

// All exported nextn rows of the last decode, n_embd floats each.
LLAMA_API float * llama_get_embeddings_nextn(struct llama_context * ctx);

// The nextn row of batch entry i of the last decode.
LLAMA_API float * llama_get_embeddings_nextn_ith(struct llama_context * ctx, int32_t i);

// The context passed as ctx_other when this one was created (NULL if none).
LLAMA_API llama_context * llama_get_ctx_other(struct llama_context * ctx);

// --- memory breakdown (src/llama-ext.h): bytes per buffer type of a context
#include <cstddef>
#include <cstdint>
#include <map>

struct llama_memory_breakdown_data {
    size_t model = 0;    // memory allocated for the model
    size_t context = 0;  // memory allocated for the context (KV cache, recurrent state)
    size_t compute = 0;  // temporary compute buffers
};
using llama_memory_breakdown = std::map<ggml_backend_buffer_type_t, llama_memory_breakdown_data>;
LLAMA_API llama_memory_breakdown llama_get_memory_breakdown(const struct llama_context * ctx);

namespace mtpstream {
// KV cache + recurrent state bytes of a context, over every buffer type.
inline uint64_t context_state_bytes(const llama_context * ctx) {
    uint64_t n = 0;
    for (const auto & kv : llama_get_memory_breakdown(ctx)) {
        n += kv.second.context;
    }
    return n;
}
}  // namespace mtpstream

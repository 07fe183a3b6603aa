// Owning handles for llama.cpp objects the engine creates.
#pragma once

#include <memory>

#include "llama.h"

namespace mtpstream {

struct ContextDeleter {
    void operator()(llama_context * c) const { llama_free(c); }
};
using ContextPtr = std::unique_ptr<llama_context, ContextDeleter>;

// The compute fields every context's options carry (a session's ContextOptions, a
// user context's UserContextOptions), onto llama.cpp's parameters; 0 / -1 keep
// llama.cpp's default. The one mapping of those fields.
template <typename Options>
void apply_compute_options(llama_context_params & cp, const Options & o) {
    if (o.n_threads > 0) {
        cp.n_threads = o.n_threads;
    }
    if (o.n_threads_batch > 0) {
        cp.n_threads_batch = o.n_threads_batch;
    }
    cp.flash_attn_type = static_cast<llama_flash_attn_type>(o.flash_attn);
    if (o.type_k >= 0) {
        cp.type_k = static_cast<ggml_type>(o.type_k);
    }
    if (o.type_v >= 0) {
        cp.type_v = static_cast<ggml_type>(o.type_v);
    }
    cp.no_perf = true;
}

}  // namespace mtpstream

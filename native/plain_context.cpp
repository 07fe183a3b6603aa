#include "plain_context.hpp"

#include "llama_staging.h"

namespace mtpstream {

PlainContext::PlainContext(llama_model * model, const llama_context_params & params)
    : model_(model), params_(params) {
    params_.n_rs_seq = 0;
}

void PlainContext::begin(bool allow) {
    active_ = allow && ctx_ != nullptr && streak_ >= 2;
    if (ctx_) {
        llama_memory_clear(llama_get_memory(ctx_.get()), true);
    }
}

bool PlainContext::want_plain(int32_t k) {
    streak_ = k == 0 ? streak_ + 1 : 0;
    return streak_ >= 2;
}

bool PlainContext::ensure() {
    if (ctx_) {
        return true;
    }
    if (failed_) {
        return false;
    }
    ctx_.reset(llama_init_from_model(model_, params_));
    if (!ctx_) {
        failed_ = true;  // keep decoding on the snapshot context
        return false;
    }
    llama_set_embeddings_nextn(ctx_.get(), true, false);
    return true;
}

bool PlainContext::move(llama_context * snapshots, bool to_plain) {
    if (to_plain == active_) {
        return true;
    }
    if (to_plain && !ensure()) {
        return false;
    }
    llama_context * src = active_ ? ctx_.get() : snapshots;
    llama_context * dst = to_plain ? ctx_.get() : snapshots;
    const size_t size = llama_state_seq_get_size_ext(src, 0, LLAMA_STATE_SEQ_FLAGS_NONE);
    buf_.resize(size);
    const size_t written = llama_state_seq_get_data_ext(src, buf_.data(), size, 0, LLAMA_STATE_SEQ_FLAGS_NONE);
    llama_memory_clear(llama_get_memory(dst), true);
    if (written == 0 || llama_state_seq_set_data_ext(dst, buf_.data(), written, 0, LLAMA_STATE_SEQ_FLAGS_NONE) == 0) {
        llama_memory_clear(llama_get_memory(dst), true);
        return false;
    }
    active_ = to_plain;
    return true;
}

}  // namespace mtpstream

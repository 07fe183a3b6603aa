#include "batch.hpp"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>

namespace mtpstream {

Batch::Batch(int32_t capacity, int32_t n_embd)
    : capacity_(capacity),
      n_embd_(n_embd),
      tokens_(static_cast<size_t>(capacity)),
      hidden_(static_cast<size_t>(capacity) * static_cast<size_t>(std::max(n_embd, 0))),
      pos_(static_cast<size_t>(capacity)),
      n_seq_id_(static_cast<size_t>(capacity), 1),
      seq_id_storage_(static_cast<size_t>(capacity), 0),
      seq_id_(static_cast<size_t>(capacity)),
      logits_(static_cast<size_t>(capacity), 0) {
    for (size_t i = 0; i < seq_id_.size(); ++i) {
        seq_id_[i] = &seq_id_storage_[i];
    }
}

int32_t Batch::add(llama_token token, llama_pos pos, llama_seq_id seq, bool output, const float * hidden) {
    if (n_ >= capacity_) {
        throw std::length_error("batch of " + std::to_string(capacity_) + " entries is full");
    }
    const auto i = static_cast<size_t>(n_);
    tokens_[i] = token;
    pos_[i] = pos;
    seq_id_storage_[i] = seq;
    logits_[i] = output ? 1 : 0;
    if (hidden != nullptr && n_embd_ > 0) {
        std::memcpy(&hidden_[i * static_cast<size_t>(n_embd_)], hidden,
                    static_cast<size_t>(n_embd_) * sizeof(float));
    }
    return n_++;
}

llama_batch Batch::view(bool with_hidden) {
    llama_batch b{};
    b.n_tokens = n_;
    b.token = tokens_.data();
    b.embd = with_hidden ? hidden_.data() : nullptr;
    b.pos = pos_.data();
    b.n_seq_id = n_seq_id_.data();
    b.seq_id = seq_id_.data();
    b.logits = logits_.data();
    return b;
}

}  // namespace mtpstream

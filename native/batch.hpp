// A llama_batch whose arrays live in vectors: token ids, positions, one sequence
// id per entry, output flags and, for the MTP draft context, the hidden row fed
// beside each token.
#pragma once

#include <cstdint>
#include <vector>

#include "llama.h"

namespace mtpstream {

class Batch {
public:
    // n_embd > 0: room for one hidden row per entry (the draft context's input).
    Batch(int32_t capacity, int32_t n_embd);
    void clear() { n_ = 0; }
    int32_t size() const { return n_; }
    int32_t capacity() const { return capacity_; }
    // Returns the entry's batch index; throws std::length_error when the batch is full.
    int32_t add(llama_token token, llama_pos pos, llama_seq_id seq, bool output, const float * hidden = nullptr);
    // Entry i (0 <= i < size()).
    llama_token token(int32_t i) const { return tokens_[static_cast<size_t>(i)]; }
    llama_pos pos(int32_t i) const { return pos_[static_cast<size_t>(i)]; }
    llama_seq_id seq(int32_t i) const { return seq_id_storage_[static_cast<size_t>(i)]; }
    bool output(int32_t i) const { return logits_[static_cast<size_t>(i)] != 0; }
    // The batch as llama_decode takes it (valid until the next add or clear).
    llama_batch view(bool with_hidden);

private:
    int32_t capacity_;
    int32_t n_embd_;
    int32_t n_ = 0;
    std::vector<llama_token> tokens_;
    std::vector<float> hidden_;
    std::vector<llama_pos> pos_;
    std::vector<int32_t> n_seq_id_;
    std::vector<llama_seq_id> seq_id_storage_;
    std::vector<llama_seq_id *> seq_id_;
    std::vector<int8_t> logits_;
};

}  // namespace mtpstream

// A llama_context that a user drives from Python (mtpstream.Context): a target
// context, which exports the nextn hidden rows a DraftSession reads, or an MTP
// draft context, which only a DraftSession decodes on. Every call locks the
// context, so calls from several threads run one at a time; close() frees the
// llama_context at once, and every later call (a session's included) gets
// ErrorCode::closed instead of touching freed memory. The model stays alive as long
// as the context object does.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "batch.hpp"
#include "llama.h"
#include "llama_handles.hpp"
#include "model.hpp"
#include "status.hpp"

namespace mtpstream {

enum class ContextKind : int32_t { target = 0, mtp = 1 };

struct UserContextOptions {
    ContextKind kind = ContextKind::target;
    int32_t n_ctx = 512;  // per sequence
    int32_t n_seq = 1;
    int32_t n_batch = 0;   // 0: min(n_ctx * n_seq, 512)
    int32_t n_ubatch = 0;  // 0: n_batch
    int32_t n_rs_seq = 0;  // recurrent-state snapshots per sequence (target of a hybrid model)
    int32_t n_threads = 0;
    int32_t n_threads_batch = 0;
    int32_t flash_attn = -1;  // llama_flash_attn_type; -1: auto
    int32_t type_k = -1;      // ggml_type; -1: llama.cpp's default
    int32_t type_v = -1;
};

// What the last decode held: DraftSession::process checks its batch against it.
struct DecodedBatch {
    uint64_t serial = 0;  // 0: nothing decoded yet
    std::vector<llama_token> tokens;
    std::vector<llama_pos> pos;
    std::vector<llama_seq_id> seq;
    std::vector<bool> output;
};

class UserContext {
public:
    static std::shared_ptr<UserContext> create(std::shared_ptr<Model> model, const UserContextOptions & opts,
                                               Status & status);
    // Take over a llama_context made elsewhere (llama-cpp-python's low-level API) on
    // `model`'s llama_model: it is freed with this object, never by its maker. Null,
    // with `status` set, when it was made from another model (then it is not taken).
    static std::shared_ptr<UserContext> adopt(std::shared_ptr<Model> model, llama_context * raw, ContextKind kind,
                                              Status & status);
    UserContext(const UserContext &) = delete;
    UserContext & operator=(const UserContext &) = delete;

    // Decode a batch (target contexts only).
    Status decode(Batch & batch);
    // The logits / nextn hidden row of batch entry i of the last decode (a copy).
    Status logits(int32_t i, std::vector<float> & out);
    Status hidden(int32_t i, std::vector<float> & out);
    // Memory of a sequence: remove [p0, p1) (negative: open), copy, last position.
    Status seq_rm(llama_seq_id seq, llama_pos p0, llama_pos p1);
    Status seq_cp(llama_seq_id src, llama_seq_id dst, llama_pos p0, llama_pos p1);
    Status seq_pos_max(llama_seq_id seq, llama_pos & out);
    void close();
    bool is_closed();

    // --- for DraftSession, with mutex() held
    std::mutex & mutex() { return mu_; }
    bool closed() const { return ctx_ == nullptr; }
    llama_context * get() const { return ctx_.get(); }
    // "lost the RPC worker ..." once a worker of the model is lost, else "".
    std::string worker_loss() const { return model_->rpc_loss(); }
    const DecodedBatch & last_decoded() const { return last_; }

    ContextKind kind() const { return opts_.kind; }
    int32_t n_ctx() const { return opts_.n_ctx; }
    int32_t n_seq() const { return opts_.n_seq; }
    int32_t n_batch() const { return opts_.n_batch; }
    int32_t n_vocab() const { return model_->n_vocab(); }
    int32_t n_embd() const { return model_->n_embd_out(); }
    const Model & model() const { return *model_; }

private:
    UserContext() = default;
    Status check_batch(const Batch & batch) const;
    Status check_row(int32_t i) const;
    Status check_seq(llama_seq_id seq, const char * field) const;

    std::mutex mu_;
    std::shared_ptr<Model> model_;
    UserContextOptions opts_;
    ContextPtr ctx_;
    DecodedBatch last_;
    uint64_t serial_ = 0;
};

}  // namespace mtpstream

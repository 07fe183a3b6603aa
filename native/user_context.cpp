#include "user_context.hpp"

#include <algorithm>
#include <climits>
#include <cstdint>
#include <string>

#include "llama_staging.h"

namespace mtpstream {

namespace {

Status invalid(const std::string & message, const char * field) {
    return Status::error(ErrorCode::invalid_argument, message, field);
}

Status closed_status() { return Status::error(ErrorCode::closed, "the context is closed"); }

llama_context_params context_params(const UserContextOptions & o) {
    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = static_cast<uint32_t>(o.n_ctx) * static_cast<uint32_t>(o.n_seq);
    cp.n_batch = static_cast<uint32_t>(o.n_batch);
    cp.n_ubatch = static_cast<uint32_t>(o.n_ubatch);
    cp.n_seq_max = static_cast<uint32_t>(o.n_seq);
    cp.kv_unified = o.n_seq > 1;
    cp.n_rs_seq = o.kind == ContextKind::target ? static_cast<uint32_t>(o.n_rs_seq) : 0;
    apply_compute_options(cp, o);
    cp.ctx_type = o.kind == ContextKind::mtp ? LLAMA_CONTEXT_TYPE_MTP : LLAMA_CONTEXT_TYPE_DEFAULT;
    return cp;
}

}  // namespace

std::shared_ptr<UserContext> UserContext::create(std::shared_ptr<Model> model, const UserContextOptions & opts,
                                                 Status & status) {
    std::shared_ptr<UserContext> c(new UserContext());
    c->model_ = std::move(model);
    c->opts_ = opts;
    const int64_t total = static_cast<int64_t>(opts.n_ctx) * opts.n_seq;
    if (opts.n_ctx < 1 || opts.n_seq < 1 || total > INT32_MAX) {
        status = invalid("n_ctx and n_seq must be >= 1 with n_ctx * n_seq in the int32 range", "n_ctx");
        return nullptr;
    }
    c->opts_.n_batch = opts.n_batch > 0 ? opts.n_batch : static_cast<int32_t>(std::min<int64_t>(total, 512));
    c->opts_.n_ubatch = opts.n_ubatch > 0 ? opts.n_ubatch : c->opts_.n_batch;
    if (opts.kind == ContextKind::mtp && c->model_->n_layer_nextn() <= 0) {
        status = Status::error(ErrorCode::no_mtp_head, "'" + c->model_->path() + "' has no MTP (NextN) layers");
        return nullptr;
    }
    c->ctx_.reset(llama_init_from_model(c->model_->get(), context_params(c->opts_)));
    if (!c->ctx_) {
        status = Status::error(opts.kind == ContextKind::mtp ? ErrorCode::no_mtp_head : ErrorCode::context,
                               std::string("llama.cpp could not create the ") +
                                   (opts.kind == ContextKind::mtp ? "MTP" : "target") + " context on '" +
                                   c->model_->path() + "'; see the 'mtpstream.llama' log");
        return nullptr;
    }
    c->opts_.n_batch = static_cast<int32_t>(llama_n_batch(c->ctx_.get()));  // as llama.cpp capped it
    // unmasked rows: one per batch entry, indexed by batch position (the draft chain
    // and DraftSession::process read them that way)
    llama_set_embeddings_nextn(c->ctx_.get(), true, false);
    return c;
}

std::shared_ptr<UserContext> UserContext::adopt(std::shared_ptr<Model> model, llama_context * raw, ContextKind kind,
                                                Status & status) {
    if (raw == nullptr) {
        status = invalid("no llama_context (a null pointer)", "context");
        return nullptr;
    }
    if (llama_get_model(raw) != model->get()) {
        status = invalid("the llama_context was made from another llama_model than this model's", "context");
        return nullptr;
    }
    if (kind == ContextKind::mtp && model->n_layer_nextn() <= 0) {
        status = Status::error(ErrorCode::no_mtp_head, "'" + model->path() + "' has no MTP (NextN) layers");
        return nullptr;
    }
    std::shared_ptr<UserContext> c(new UserContext());
    c->model_ = std::move(model);
    c->ctx_.reset(raw);
    c->opts_.kind = kind;
    c->opts_.n_seq = static_cast<int32_t>(std::max<uint32_t>(llama_n_seq_max(raw), 1));
    c->opts_.n_ctx = static_cast<int32_t>(llama_n_ctx(raw)) / c->opts_.n_seq;
    c->opts_.n_batch = static_cast<int32_t>(llama_n_batch(raw));
    c->opts_.n_ubatch = static_cast<int32_t>(llama_n_ubatch(raw));
    llama_set_embeddings_nextn(raw, true, false);  // as create() sets it
    return c;
}

Status UserContext::check_seq(llama_seq_id seq, const char * field) const {
    if (seq < 0 || seq >= opts_.n_seq) {
        return invalid(std::string(field) + " " + std::to_string(seq) + " is out of range for a context of n_seq=" +
                           std::to_string(opts_.n_seq),
                       field);
    }
    return {};
}

Status UserContext::check_batch(const Batch & batch) const {
    if (batch.size() == 0 || batch.size() > opts_.n_batch) {
        return invalid("a batch holds 1 to n_batch (" + std::to_string(opts_.n_batch) + ") entries, not " +
                           std::to_string(batch.size()),
                       "batch");
    }
    for (int32_t i = 0; i < batch.size(); ++i) {
        if (!model_->valid_token(batch.token(i))) {
            return invalid("batch entry " + std::to_string(i) + ": token " + std::to_string(batch.token(i)) +
                               " is out of range for a vocabulary of " + std::to_string(model_->n_vocab()) +
                               " tokens",
                           "batch");
        }
        if (batch.pos(i) < 0 || batch.pos(i) >= opts_.n_ctx) {
            return invalid("batch entry " + std::to_string(i) + ": position " + std::to_string(batch.pos(i)) +
                               " is outside 0..n_ctx-1 (n_ctx=" + std::to_string(opts_.n_ctx) + ")",
                           "batch");
        }
        Status st = check_seq(batch.seq(i), "seq_id");
        if (!st.ok()) {
            st.field = "batch";
            return st;
        }
    }
    return {};
}

Status UserContext::decode(Batch & batch) {
    std::lock_guard<std::mutex> lock(mu_);
    if (closed()) {
        return closed_status();
    }
    if (opts_.kind != ContextKind::target) {
        return invalid("an MTP context is decoded by the DraftSession that uses it, not directly", "batch");
    }
    Status st = check_batch(batch);
    if (!st.ok()) {
        return st;
    }
    last_ = DecodedBatch();
    const int32_t rc = llama_decode(ctx_.get(), batch.view(false));
    const std::string loss = worker_loss();
    if (!loss.empty()) {  // the decode ran on stand-in data
        return Status::error(ErrorCode::worker_lost, loss + "; the model is unusable: load it again");
    }
    if (rc != 0) {
        return Status::error(ErrorCode::generation,
                             "llama_decode failed on the target context (code " + std::to_string(rc) +
                                 "; positions must continue each sequence's memory)");
    }
    last_.serial = ++serial_;
    for (int32_t i = 0; i < batch.size(); ++i) {
        last_.tokens.push_back(batch.token(i));
        last_.pos.push_back(batch.pos(i));
        last_.seq.push_back(batch.seq(i));
        last_.output.push_back(batch.output(i));
    }
    return {};
}

Status UserContext::check_row(int32_t i) const {
    if (closed()) {
        return closed_status();
    }
    const auto n = static_cast<int32_t>(last_.tokens.size());
    if (i < 0 || i >= n) {
        return invalid("row " + std::to_string(i) + " is not an entry of the last decoded batch (" +
                           std::to_string(n) + " entries)",
                       "i");
    }
    return {};
}

Status UserContext::logits(int32_t i, std::vector<float> & out) {
    std::lock_guard<std::mutex> lock(mu_);
    Status st = check_row(i);
    if (!st.ok()) {
        return st;
    }
    if (!last_.output[static_cast<size_t>(i)]) {
        return invalid("batch entry " + std::to_string(i) + " was not marked for logits", "i");
    }
    const float * p = llama_get_logits_ith(ctx_.get(), i);
    if (p == nullptr) {
        return Status::error(ErrorCode::generation, "llama.cpp has no logits for entry " + std::to_string(i));
    }
    out.assign(p, p + model_->n_vocab());
    return {};
}

Status UserContext::hidden(int32_t i, std::vector<float> & out) {
    std::lock_guard<std::mutex> lock(mu_);
    Status st = check_row(i);
    if (!st.ok()) {
        return st;
    }
    const float * p = llama_get_embeddings_nextn_ith(ctx_.get(), i);
    if (p == nullptr) {
        return Status::error(ErrorCode::generation, "the context exported no hidden row for entry " +
                                                        std::to_string(i));
    }
    out.assign(p, p + model_->n_embd_out());
    return {};
}

Status UserContext::seq_rm(llama_seq_id seq, llama_pos p0, llama_pos p1) {
    std::lock_guard<std::mutex> lock(mu_);
    if (closed()) {
        return closed_status();
    }
    Status st = seq < 0 ? Status() : check_seq(seq, "seq_id");
    if (!st.ok()) {
        return st;
    }
    if (!llama_memory_seq_rm(llama_get_memory(ctx_.get()), seq, p0, p1)) {
        return Status::error(ErrorCode::generation,
                             "llama.cpp cannot remove positions [" + std::to_string(p0) + ", " + std::to_string(p1) +
                                 ") of sequence " + std::to_string(seq) +
                                 " (recurrent memory only rolls back to one of its n_rs_seq snapshots)");
    }
    return {};
}

Status UserContext::seq_cp(llama_seq_id src, llama_seq_id dst, llama_pos p0, llama_pos p1) {
    std::lock_guard<std::mutex> lock(mu_);
    if (closed()) {
        return closed_status();
    }
    Status st = check_seq(src, "src");
    if (st.ok()) {
        st = check_seq(dst, "dst");
    }
    if (!st.ok()) {
        return st;
    }
    llama_memory_seq_cp(llama_get_memory(ctx_.get()), src, dst, p0, p1);
    return {};
}

Status UserContext::seq_pos_max(llama_seq_id seq, llama_pos & out) {
    std::lock_guard<std::mutex> lock(mu_);
    if (closed()) {
        return closed_status();
    }
    Status st = check_seq(seq, "seq_id");
    if (st.ok()) {
        out = llama_memory_seq_pos_max(llama_get_memory(ctx_.get()), seq);
    }
    return st;
}

void UserContext::close() {
    std::lock_guard<std::mutex> lock(mu_);
    ctx_.reset();
    last_ = DecodedBatch();
}

bool UserContext::is_closed() {
    std::lock_guard<std::mutex> lock(mu_);
    return closed();
}

}  // namespace mtpstream

#include "draft_session.hpp"

#include <algorithm>
#include <string>

#include "draft_chain.hpp"
#include "llama_staging.h"

namespace mtpstream {

namespace {

Status invalid(const std::string & message, const char * field) {
    return Status::error(ErrorCode::invalid_argument, message, field);
}

Status unusable(const std::string & message) { return Status::error(ErrorCode::generation, message); }

std::string seq_name(llama_seq_id seq) { return "sequence " + std::to_string(seq); }

}  // namespace

std::shared_ptr<DraftSession> DraftSession::create(std::shared_ptr<UserContext> target,
                                                   std::shared_ptr<UserContext> draft, int32_t n_seq,
                                                   int32_t n_draft_max, Status & status) {
    if (target->kind() != ContextKind::target) {
        status = invalid("target must be a Context of kind 'target'", "target");
    } else if (draft->kind() != ContextKind::mtp) {
        status = invalid("draft must be a Context of kind 'mtp' (its model's MTP head)", "draft");
    } else if (target->n_embd() != draft->n_embd()) {
        status = invalid("the draft model's hidden width (" + std::to_string(draft->n_embd()) +
                             ") differs from the target's (" + std::to_string(target->n_embd()) + ")",
                         "draft");
    } else if (n_seq < 1 || n_seq > target->n_seq() || n_seq > draft->n_seq()) {
        status = invalid("n_seq must be from 1 to the contexts' n_seq (target " + std::to_string(target->n_seq()) +
                             ", draft " + std::to_string(draft->n_seq()) + ")",
                         "n_seq");
    } else if (n_draft_max < 1 || n_draft_max >= target->n_ctx()) {
        status = invalid("n_draft_max must be from 1 to n_ctx - 1", "n_draft_max");
    } else if (draft->n_batch() < 2) {
        status = invalid("the draft context's n_batch must be at least 2", "draft");
    } else if (target->is_closed() || draft->is_closed()) {
        status = Status::error(ErrorCode::closed, "a context of the session is closed");
    }
    if (!status.ok()) {
        return nullptr;
    }
    std::shared_ptr<DraftSession> s(new DraftSession());
    s->tgt_ = std::move(target);
    s->dft_ = std::move(draft);
    s->n_seq_ = n_seq;
    s->n_draft_max_ = n_draft_max;
    s->n_embd_ = s->tgt_->n_embd();
    s->batch_ = std::make_unique<Batch>(s->dft_->n_batch(), s->n_embd_);
    s->seqs_.resize(static_cast<size_t>(n_seq));
    for (Seq & q : s->seqs_) {
        q.feed.restart(0, static_cast<size_t>(s->n_embd_));
    }
    return s;
}

Status DraftSession::usable() const {
    if (!tgt_ || !dft_) {
        return Status::error(ErrorCode::closed, "the DraftSession is closed");
    }
    return {};
}

Status DraftSession::check_seq(llama_seq_id seq) const {
    Status st = usable();
    if (st.ok() && (seq < 0 || seq >= n_seq_)) {
        st = invalid("seq_id " + std::to_string(seq) + " is out of range (n_seq=" + std::to_string(n_seq_) + ")",
                     "seq_id");
    }
    return st;
}

void DraftSession::reset_seq(llama_seq_id seq) {
    Seq & s = seqs_[static_cast<size_t>(seq)];
    s = Seq();
    s.feed.restart(0, static_cast<size_t>(n_embd_));
    if (!dft_->closed()) {
        llama_memory_seq_rm(llama_get_memory(dft_->get()), seq, -1, -1);
    }
}

Status DraftSession::begin(llama_seq_id seq, const std::vector<llama_token> & prompt) {
    std::lock_guard<std::mutex> lock(mu_);
    Status st = check_seq(seq);
    if (!st.ok()) {
        return st;
    }
    const Seq & s = seqs_[static_cast<size_t>(seq)];
    if (!s.drafted && !prompt.empty() && s.seen == prompt) {
        return {};  // called after process() of exactly this prompt
    }
    std::lock_guard<std::mutex> ld(dft_->mutex());
    if (dft_->closed()) {
        return Status::error(ErrorCode::closed, "the draft context is closed");
    }
    reset_seq(seq);
    return {};
}

// Whether a sequence's entries in a batch can be taken in: consecutive positions
// that continue what the session saw (or verify its last draft).
Status DraftSession::check_part(llama_seq_id seq, const Batch & batch, const Part & part) const {
    const Seq & s = seqs_[static_cast<size_t>(seq)];
    const llama_pos p0 = batch.pos(part.idx.front());
    for (size_t j = 1; j < part.idx.size(); ++j) {
        if (batch.pos(part.idx[j]) != p0 + static_cast<llama_pos>(j)) {
            return unusable("process(): the positions of " + seq_name(seq) + " in the batch are not consecutive");
        }
    }
    if (s.verified) {
        return unusable("process(): " + seq_name(seq) + " has a processed verify waiting for accept()");
    }
    if (s.drafted) {
        if (p0 != s.draft_pos || batch.token(part.idx.front()) != s.draft_last) {
            return unusable("process(): the batch does not verify the last draft of " + seq_name(seq) +
                            " (it must start with id_last " + std::to_string(s.draft_last) + " at position " +
                            std::to_string(s.draft_pos) + ")");
        }
        return {};
    }
    const auto seen = static_cast<llama_pos>(s.seen.size());
    if (p0 != 0 && p0 != seen) {
        return unusable("process(): " + seq_name(seq) + " starts at position " + std::to_string(p0) +
                        " but the session has taken in positions 0.." + std::to_string(seen - 1) +
                        ": pass every batch decoded on the target to process() (begin() starts over)");
    }
    return {};
}

void DraftSession::take_part(llama_seq_id seq, const Batch & batch, const Part & part, const float * rows) {
    Seq & s = seqs_[static_cast<size_t>(seq)];
    const llama_pos p0 = batch.pos(part.idx.front());
    if (!s.drafted && p0 == 0 && !s.seen.empty()) {
        reset_seq(seq);  // a new prompt at position 0: start over
    }
    std::vector<llama_token> tok;
    std::vector<float> h;
    for (const int32_t i : part.idx) {
        tok.push_back(batch.token(i));
        const float * r = rows + static_cast<size_t>(i) * static_cast<size_t>(n_embd_);
        h.insert(h.end(), r, r + n_embd_);
    }
    if (s.drafted) {
        s.verified = true;
        s.vtok = std::move(tok);
        s.vrows = std::move(h);
        return;
    }
    s.feed.add_decoded(tok.data(), static_cast<int32_t>(tok.size()), p0, h.data());
    s.seen.insert(s.seen.end(), tok.begin(), tok.end());
}

Status DraftSession::process(const Batch & batch) {
    std::lock_guard<std::mutex> lock(mu_);
    Status st = usable();
    if (!st.ok()) {
        return st;
    }
    std::lock_guard<std::mutex> lt(tgt_->mutex());
    std::lock_guard<std::mutex> ld(dft_->mutex());
    if (tgt_->closed() || dft_->closed()) {
        return Status::error(ErrorCode::closed, "a context of the DraftSession is closed");
    }
    const DecodedBatch & last = tgt_->last_decoded();
    const auto n = static_cast<size_t>(batch.size());
    bool same = last.serial != 0 && last.tokens.size() == n;
    for (size_t i = 0; same && i < n; ++i) {
        const auto k = static_cast<int32_t>(i);
        same = last.tokens[i] == batch.token(k) && last.pos[i] == batch.pos(k) && last.seq[i] == batch.seq(k);
    }
    if (!same) {
        return unusable("process() takes the batch just decoded on the target context (this one is not it)");
    }
    if (last.serial == processed_) {
        return unusable("process(): this target decode was already processed");
    }
    const float * rows = llama_get_embeddings_nextn(tgt_->get());
    if (rows == nullptr) {
        return unusable("process(): the target context exported no hidden rows");
    }
    std::vector<Part> parts(static_cast<size_t>(n_seq_));
    for (int32_t i = 0; i < batch.size(); ++i) {
        if (batch.seq(i) >= n_seq_) {
            return unusable("process(): batch entry " + std::to_string(i) + " is in sequence " +
                            std::to_string(batch.seq(i)) + " (the session has n_seq=" + std::to_string(n_seq_) + ")");
        }
        parts[static_cast<size_t>(batch.seq(i))].idx.push_back(i);
    }
    for (llama_seq_id q = 0; q < n_seq_; ++q) {
        if (!parts[static_cast<size_t>(q)].idx.empty() && !(st = check_part(q, batch, parts[static_cast<size_t>(q)])).ok()) {
            return st;
        }
    }
    for (llama_seq_id q = 0; q < n_seq_; ++q) {
        if (!parts[static_cast<size_t>(q)].idx.empty()) {
            take_part(q, batch, parts[static_cast<size_t>(q)], rows);
        }
    }
    processed_ = last.serial;
    return {};
}

Status DraftSession::run_chain(Seq & s, llama_seq_id seq, int32_t n_past, llama_token id_last, int32_t k,
                               std::vector<llama_token> & out) {
    llama_context * dft = dft_->get();
    const ChainDecode decode = [dft](Batch & b) { return llama_decode(dft, b.view(true)); };
    if (s.feed.size() + 2 > batch_->capacity() && !flush_feed(s.feed, seq, *batch_, decode)) {
        reset_seq(seq);
        return unusable("llama_decode failed on the MTP context; " + seq_name(seq) + " starts over (begin())");
    }
    ChainLane lane;
    lane.feed = &s.feed;
    lane.seq = seq;
    lane.last = id_last;
    lane.n_past = n_past;
    lane.k = k;
    const int32_t rc = run_draft_chain(dft, *batch_, dft_->n_vocab(), {&lane}, false, decode);
    const std::string loss = dft_->worker_loss();
    if (!loss.empty()) {  // the chain ran on stand-in data
        reset_seq(seq);
        return Status::error(ErrorCode::worker_lost, loss + "; the model is unusable: load it again");
    }
    if (rc != 0 || lane.state != ChainLane::State::drafting) {
        reset_seq(seq);
        return unusable((rc != 0 ? "llama_decode failed on the MTP context (code " + std::to_string(rc) + ")"
                                 : lane.error) +
                        "; " + seq_name(seq) + " starts over (begin())");
    }
    s.last_fed = true;
    out = lane.drafts;
    return {};
}

Status DraftSession::draft(llama_seq_id seq, int32_t n_past, llama_token id_last, int32_t n_draft,
                           std::vector<llama_token> & out) {
    std::lock_guard<std::mutex> lock(mu_);
    Status st = check_seq(seq);
    if (!st.ok()) {
        return st;
    }
    if (id_last < 0 || id_last >= tgt_->n_vocab()) {
        return invalid("id_last " + std::to_string(id_last) + " is out of range for a vocabulary of " +
                           std::to_string(tgt_->n_vocab()) + " tokens",
                       "id_last");
    }
    if (n_draft > n_draft_max_) {
        return invalid("n_draft must be at most n_draft_max (" + std::to_string(n_draft_max_) + ")", "n_draft");
    }
    Seq & s = seqs_[static_cast<size_t>(seq)];
    if (s.verified) {
        return unusable("draft(): the verify of the last draft of " + seq_name(seq) + " waits for accept()");
    }
    std::lock_guard<std::mutex> ld(dft_->mutex());
    if (dft_->closed()) {
        return Status::error(ErrorCode::closed, "the draft context of the DraftSession is closed");
    }
    if (s.drafted && s.last_fed) {  // a new draft replaces one that was never verified
        llama_memory_seq_rm(llama_get_memory(dft_->get()), seq, s.draft_pos, -1);
    }
    s.drafted = false;
    s.last_fed = false;
    const auto seen = static_cast<int32_t>(s.seen.size());
    if (n_past != seen || n_past < 1) {
        return unusable(
            "draft(seq_id=" + std::to_string(seq) + ", n_past=" + std::to_string(n_past) + "): " +
            (seen == 0 ? std::string("the session has taken in nothing of this sequence")
                       : "the session has taken in positions 0.." + std::to_string(seen - 1)) +
            (n_past > seen ? "; the draft needs the target's hidden row at position " + std::to_string(n_past - 1) +
                                 ": process() every batch decoded on the target, the one holding the last "
                                 "accepted token included"
                           : "; n_past is the position of id_last (after a verify: its first position + "
                             "n_accepted + 1)"));
    }
    const int32_t k = std::min(n_draft < 0 ? n_draft_max_ : n_draft, tgt_->n_ctx() - n_past - 1);
    out.clear();
    if (k > 0 && !(st = run_chain(s, seq, n_past, id_last, k, out)).ok()) {
        return st;
    }
    s.drafted = true;
    s.draft_pos = n_past;
    s.draft_last = id_last;
    return {};
}

Status DraftSession::accept(llama_seq_id seq, int32_t n_accepted) {
    std::lock_guard<std::mutex> lock(mu_);
    Status st = check_seq(seq);
    if (!st.ok()) {
        return st;
    }
    Seq & s = seqs_[static_cast<size_t>(seq)];
    if (!s.drafted) {
        return n_accepted == 0 ? Status() : unusable("accept(): " + seq_name(seq) + " has no draft to accept");
    }
    if (!s.verified) {
        return unusable("accept(): process() the target batch that verified the draft of " + seq_name(seq) +
                        " first");
    }
    const auto n_max = static_cast<int32_t>(s.vtok.size()) - 1;
    if (n_accepted < 0 || n_accepted > n_max) {
        return invalid("n_accepted must be from 0 to " + std::to_string(n_max) +
                           " (the drafts in the verify batch of " + seq_name(seq) + ")",
                       "n_accepted");
    }
    s.feed.add_verified(s.draft_last, s.vtok.data() + 1, n_accepted, s.last_fed, s.vrows.data());
    s.seen.insert(s.seen.end(), s.vtok.begin(), s.vtok.begin() + n_accepted + 1);
    s.drafted = false;
    s.verified = false;
    s.last_fed = false;
    s.vtok.clear();
    s.vrows.clear();
    return {};
}

void DraftSession::close() {
    std::lock_guard<std::mutex> lock(mu_);
    tgt_.reset();
    dft_.reset();
    seqs_.clear();
}

bool DraftSession::closed() {
    std::lock_guard<std::mutex> lock(mu_);
    return !tgt_ || !dft_;
}

}  // namespace mtpstream

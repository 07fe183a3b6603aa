#include "draft_chain.hpp"

#include <algorithm>

#include "llama_staging.h"

namespace mtpstream {

namespace {

void fail(ChainLane & lane, const char * why) {
    lane.state = ChainLane::State::failed;
    lane.error = why;
}

// Draft j of the lane from the decode just done: the backend sampler's token, the
// head's argmax or a draw from its distribution; LLAMA_TOKEN_NULL: no output row,
// another negative value: no finite logit.
llama_token draft_of(llama_context * dft, ChainLane & lane, int32_t n_vocab, int32_t j) {
    if (lane.on_device) {
        return llama_get_sampled_token_ith(dft, lane.idx);
    }
    const float * logits = Sampler::logits(dft, lane.idx);
    if (logits == nullptr) {
        return LLAMA_TOKEN_NULL;
    }
    if (lane.sampler != nullptr) {
        const llama_token d = lane.sampler->draft_token(logits, (*lane.q)[static_cast<size_t>(j)]);
        return d == LLAMA_TOKEN_NULL ? -2 : d;
    }
    return greedy_token(logits, n_vocab);
}

// Take each drafting lane's draft j from the decode just done and queue its next
// step; lanes that fail leave `drafting`.
void take_drafts(llama_context * dft, Batch & batch, int32_t n_vocab, std::vector<ChainLane *> & drafting,
                 int32_t j) {
    batch.clear();
    for (ChainLane * lane : drafting) {
        if (j >= lane->k) {
            continue;
        }
        const float * h = llama_get_embeddings_nextn_ith(dft, lane->idx);
        const llama_token d = h == nullptr ? LLAMA_TOKEN_NULL : draft_of(dft, *lane, n_vocab, j);
        if (d == LLAMA_TOKEN_NULL) {
            fail(*lane, "the MTP head produced no output");
            continue;
        }
        if (d < 0) {
            fail(*lane, "the MTP head produced no finite logit");
            continue;
        }
        lane->drafts.push_back(d);
        if (j + 1 < lane->k) {
            lane->idx = batch.add(d, lane->n_past + 1 + j, lane->seq, true, h);
        }
    }
    drafting.erase(std::remove_if(drafting.begin(), drafting.end(),
                                  [](const ChainLane * l) { return l->state != ChainLane::State::drafting; }),
                   drafting.end());
}

}  // namespace

int32_t run_draft_chain(llama_context * dft, Batch & batch, int32_t n_vocab, const std::vector<ChainLane *> & lanes,
                        bool skip_feed, const ChainDecode & decode) {
    std::vector<ChainLane *> drafting = lanes;
    batch.clear();
    int32_t k_most = 0;
    for (ChainLane * lane : drafting) {
        const DraftFeed & f = *lane->feed;
        for (int32_t j = 0; j < f.size() && !skip_feed; ++j) {
            batch.add(f.tok[static_cast<size_t>(j)], f.pos + j, lane->seq, false, f.row(j));
        }
        lane->idx = batch.add(lane->last, lane->n_past, lane->seq, true, f.carry.data());
        lane->drafts.clear();
        lane->state = ChainLane::State::drafting;
        k_most = std::max(k_most, lane->k);
    }
    for (int32_t j = 0; j < k_most && batch.size() > 0; ++j) {
        const int32_t rc = decode(batch);
        if (rc != 0) {
            for (ChainLane * lane : drafting) {
                lane->state = ChainLane::State::decode_failed;
            }
            return rc;
        }
        if (j == 0) {
            for (ChainLane * lane : drafting) {
                lane->feed->fed(lane->n_past + 1);
            }
        }
        take_drafts(dft, batch, n_vocab, drafting, j);
    }
    for (ChainLane * lane : drafting) {
        if (lane->k >= 2 && !llama_memory_seq_rm(llama_get_memory(dft), lane->seq, lane->n_past + 1, -1)) {
            fail(*lane, "could not remove draft cells from the MTP context");
        }
    }
    return 0;
}

bool flush_feed(DraftFeed & feed, llama_seq_id seq, Batch & batch, const ChainDecode & decode) {
    const int32_t n = feed.size();
    for (int32_t off = 0; off < n; off += batch.capacity()) {
        const int32_t m = std::min(batch.capacity(), n - off);
        batch.clear();
        for (int32_t i = 0; i < m; ++i) {
            batch.add(feed.tok[static_cast<size_t>(off + i)], feed.pos + off + i, seq, false, feed.row(off + i));
        }
        if (decode(batch) != 0) {
            return false;
        }
    }
    feed.fed(feed.pos + n);
    return true;
}

}  // namespace mtpstream

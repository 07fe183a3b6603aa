// Verifying one lane's drafts against the target's output rows of its verify
// batch (row verify_idx + i holds the target's logits for the position of draft i,
// row verify_idx + k the one after the last draft). Both fill lane.out with the
// tokens the round emits (the kept drafts, then one token of the target's) and
// lane.n_acc with the number of kept drafts.
//
//   match      the target samples its own token at each position with the call's
//              chain; a draft is kept while it equals that token.
//   rejection  speculative sampling (see sampler.hpp): draft i is kept with
//              probability min(1, p(d)/q(d)); the first rejected position draws
//              from norm(max(0, p - q)); after k kept drafts a bonus token comes
//              from p at row k.
// In both, an end-of-generation token ends the round as the target's token (it is
// never counted as an accepted draft).
#include "engine.hpp"

namespace mtpstream {

bool Engine::verify_match(Lane & lane, llama_context * tgt, std::string & error) {
    Generation & g = *lane.g;
    const int32_t k = lane.k;
    for (int32_t i = 0; i <= k; ++i) {
        llama_token tok = -1;
        if (!sample(g, tgt, lane.verify_idx + i, tok, error)) {
            if (i == 0) {
                return false;
            }
            // the drafts before i were accepted: the last of them becomes the target's
            // token of this round, and the next round meets the dead end at i == 0
            --lane.n_acc;
            break;
        }
        lane.out.push_back(tok);
        if (i < k && tok == lane.chain.drafts[static_cast<size_t>(i)] && !target_->is_eog(tok)) {
            ++lane.n_acc;
            continue;
        }
        break;
    }
    return true;
}

bool Engine::verify_rejection(Lane & lane, llama_context * tgt, std::string & error) {
    Sampler & s = *lane.g->sampler;
    const int32_t k = lane.k;
    for (int32_t i = 0; i <= k; ++i) {
        const float * row = Sampler::logits(tgt, lane.verify_idx + i);
        if (row != nullptr) {
            s.distribution(row, p_);
        }
        if (row == nullptr || p_.empty()) {
            error = "the target produced no finite logits";
            return false;
        }
        if (i == k) {
            lane.out.push_back(s.draw(p_));  // every draft kept: the bonus token
            break;
        }
        const llama_token d = lane.chain.drafts[static_cast<size_t>(i)];
        const TokenDist & q = lane.g->draft_q[static_cast<size_t>(i)];
        if (!s.accept_draft(d, p_, q)) {
            lane.out.push_back(s.residual_token(p_, q));
            break;
        }
        lane.out.push_back(d);
        if (target_->is_eog(d)) {
            break;
        }
        ++lane.n_acc;
    }
    for (size_t j = 0; j < lane.out.size(); ++j) {
        s.accept(lane.out[j]);
        record_logprobs(*lane.g, tgt, lane.verify_idx + static_cast<int32_t>(j), lane.out[j]);
    }
    return true;
}

}  // namespace mtpstream

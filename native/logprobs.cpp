#include "logprobs.hpp"

#include <algorithm>
#include <cmath>

namespace mtpstream {

void token_logprobs(const float * logits, int32_t n_vocab, llama_token chosen, int32_t n_top,
                    std::vector<TokenProb> & out) {
    out.clear();
    if (logits == nullptr || n_vocab <= 0) {
        return;
    }
    float max_l = -INFINITY;
    for (int32_t t = 0; t < n_vocab; ++t) {
        max_l = std::max(max_l, logits[t]);
    }
    double sum = 0.0;
    for (int32_t t = 0; t < n_vocab; ++t) {
        sum += std::exp(static_cast<double>(logits[t]) - static_cast<double>(max_l));
    }
    const double log_z = static_cast<double>(max_l) + std::log(sum);
    auto logprob = [&](llama_token t) { return static_cast<float>(static_cast<double>(logits[t]) - log_z); };
    out.push_back(TokenProb{chosen, (chosen >= 0 && chosen < n_vocab) ? logprob(chosen) : -INFINITY, {}});
    const int32_t n = std::min(std::max(n_top, 0), n_vocab);
    if (n == 0) {
        return;
    }
    // the n best in one pass: a small list kept sorted (n <= kMaxTopLogprobs)
    std::vector<llama_token> best;
    best.reserve(static_cast<size_t>(n) + 1);
    auto better = [&](llama_token a, llama_token b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); };
    for (llama_token t = 0; t < n_vocab; ++t) {
        if (static_cast<int32_t>(best.size()) == n && !better(t, best.back())) {
            continue;
        }
        best.insert(std::upper_bound(best.begin(), best.end(), t, better), t);
        if (static_cast<int32_t>(best.size()) > n) {
            best.pop_back();
        }
    }
    for (const llama_token t : best) {
        out.push_back(TokenProb{t, logprob(t), {}});
    }
}

}  // namespace mtpstream

// What the MTP context of one sequence still needs from the target, and the one
// place that pairs tokens with hidden rows. An MTP head predicting the token at
// p + 2 is fed (token at p + 1, the target's hidden row at p): each token goes in
// with the row of the position before it. `carry` is the target's row at the
// position before the newest token (the row a draft starts from); `tok`/`h` are the
// pairs the MTP context has not decoded yet, from position `pos` on. The engine keeps
// one per generation, DraftSession one per sequence.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "llama.h"

namespace mtpstream {

struct DraftFeed {
    std::vector<float> carry;
    std::vector<llama_token> tok;
    std::vector<float> h;
    int32_t pos = 0;

    std::size_t n_embd() const { return carry.size(); }
    int32_t size() const { return static_cast<int32_t>(tok.size()); }
    const float * row(int32_t i) const { return &h[static_cast<std::size_t>(i) * n_embd()]; }

    // Start over at position `at`: no pending pair, `row` (nullptr: zeros) as carry.
    void restart(int32_t at, std::size_t n_embd, const float * row = nullptr) {
        carry.assign(n_embd, 0.0f);
        if (row != nullptr) {
            std::memcpy(carry.data(), row, n_embd * sizeof(float));
        }
        tok.clear();
        h.clear();
        pos = at;
    }
    // The MTP context decoded every pending pair: the next one is at `next`.
    void fed(int32_t next) {
        tok.clear();
        h.clear();
        pos = next;
    }
    void push(llama_token t, const float * row) {
        tok.push_back(t);
        h.insert(h.end(), row, row + n_embd());
    }
    void set_carry(const float * row) { std::memcpy(carry.data(), row, n_embd() * sizeof(float)); }

    // n tokens the target decoded at pos0.. with `rows` their hidden rows (n_embd
    // floats each, consecutive): each token is paired with the row before it (the
    // first with the carry), and the last row becomes the carry.
    void add_decoded(const llama_token * tokens, int32_t n, int32_t pos0, const float * rows) {
        if (n <= 0) {
            return;
        }
        if (tok.empty()) {
            pos = pos0;
        }
        const std::size_t w = n_embd();
        push(tokens[0], carry.data());
        for (int32_t i = 1; i < n; ++i) {
            push(tokens[i], rows + static_cast<std::size_t>(i - 1) * w);
        }
        set_carry(rows + static_cast<std::size_t>(n - 1) * w);
    }

    // A verify of [last, d1..dk] decoded on the target, `rows` its hidden rows
    // (consecutive), n_acc drafts accepted: d1..d_nacc go in with the rows before
    // them, row n_acc becomes the carry. `last_fed`: the draft chain already gave the
    // MTP context `last` (with the carry); otherwise it is pending too.
    void add_verified(llama_token last, const llama_token * drafts, int32_t n_acc, bool last_fed,
                      const float * rows) {
        const std::size_t w = n_embd();
        if (!last_fed) {
            push(last, carry.data());
        }
        for (int32_t i = 0; i < n_acc; ++i) {
            push(drafts[i], rows + static_cast<std::size_t>(i) * w);
        }
        set_carry(rows + static_cast<std::size_t>(n_acc) * w);
    }
};

}  // namespace mtpstream

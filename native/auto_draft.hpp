// n_draft="auto": picks the draft length of each iteration from the measured
// acceptance and the measured costs of drafting and verifying.
//
// With per-position acceptance probability p (a draft is accepted given the ones
// before it were), an iteration with k drafts emits 1 + p + ... + p^k tokens on
// average and costs k draft steps plus one (k+1)-token verify. We pick the k with
// the most tokens per microsecond. Costs are running averages per k; verify costs
// of k values not measured yet come from a least-squares line through the measured
// ones. A few probes at the start and one every 48 iterations (every 128 while
// plain decoding wins) keep the estimates fresh, so a session can move between
// "plain" and "long drafts". The first measurement of each draft length is only a
// placeholder: it may include llama.cpp allocating a compute graph for a batch size
// it has not seen, so the second one replaces it (each initial probe runs twice).
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

namespace mtpstream {

class AutoDraft {
public:
    explicit AutoDraft(int max_k)
        : max_k_(max_k), verify_us_(static_cast<size_t>(max_k) + 1, -1.0), seen_(static_cast<size_t>(max_k) + 1, 0) {}

    int max_k() const { return max_k_; }

    int choose() {
        ++iter_;
        // initial probes, twice each: one draft, the longest draft, no draft
        const int probes[] = {1, max_k_, 0};
        for (int round = 1; round <= 2; ++round) {
            for (int k : probes) {
                if (seen_[static_cast<size_t>(k)] < round) {
                    return k;
                }
            }
        }
        const int best = best_k();
        // while drafting does not pay, probe rarely (each probe costs a draft step
        // and a 2-token verify); otherwise alternate probes below and above
        const int64_t every = best == 0 ? probe_every_idle : probe_every;
        if (iter_ % every == 0) {
            const int step = best == 0 || (iter_ / every) % 2 == 0 ? 1 : -1;
            return std::clamp(best + step, 0, max_k_);
        }
        return best;
    }

    // costs_valid=false: the iteration also paid a one-off (the sequence moved to the
    // other target context, whose first decode may rebuild its graph), so only the
    // acceptance is learned from it.
    void observe(int k, int n_accepted, double draft_us, double verify_us, bool costs_valid = true) {
        constexpr double decay = 0.98;
        if (k > 0) {
            successes_ = successes_ * decay + n_accepted;
            trials_ = trials_ * decay + n_accepted + (n_accepted < k ? 1 : 0);
        }
        if (!costs_valid) {
            return;
        }
        if (k > 0) {
            update(draft_step_us_, draft_seen_, draft_us / k);
        }
        update(verify_us_[static_cast<size_t>(k)], seen_[static_cast<size_t>(k)], verify_us);
    }

    double acceptance() const { return (successes_ + 1.0) / (trials_ + 2.0); }

private:
    static constexpr int64_t probe_every = 48;
    static constexpr int64_t probe_every_idle = 128;

    // The second measurement replaces the first; later ones enter a running average,
    // each clamped to twice the current estimate so that one stall (a page fault, the
    // machine pausing the process) cannot outweigh many normal iterations.
    static void update(double & estimate, int & seen, double measured) {
        constexpr double alpha = 0.2;
        seen = std::min(seen + 1, 3);
        if (seen <= 2) {
            estimate = measured;
        } else {
            estimate += alpha * (std::min(measured, 2.0 * estimate) - estimate);
        }
    }

    int best_k() const {
        // least-squares line through the measured verify costs
        double n = 0, sx = 0, sy = 0, sxx = 0, sxy = 0;
        for (int k = 0; k <= max_k_; ++k) {
            const double v = verify_us_[static_cast<size_t>(k)];
            if (v >= 0.0) {
                n += 1;
                sx += k;
                sy += v;
                sxx += static_cast<double>(k) * k;
                sxy += k * v;
            }
        }
        const double den = n * sxx - sx * sx;
        const double slope = den > 0.0 ? (n * sxy - sx * sy) / den : 0.0;
        const double icpt = n > 0.0 ? (sy - slope * sx) / n : 1.0;
        const double p = acceptance();
        const double d = std::max(draft_step_us_, 0.0);
        int best = 0;
        double best_rate = -1.0;
        double expected = 0.0;  // 1 + p + ... + p^k
        double pk = 1.0;
        double shorter = 0.0;  // the cost taken for k - 1
        for (int k = 0; k <= max_k_; ++k) {
            expected += pk;
            pk *= p;
            double v = verify_us_[static_cast<size_t>(k)];
            if (v < 0.0) {
                v = std::max(icpt + slope * k, 1.0);
            }
            // verifying more tokens never costs less: a noisy, low estimate for a
            // longer verify must not make drafting look free when it is not accepted
            v = std::max(v, shorter);
            shorter = v;
            const double rate = expected / (d * k + v);
            if (rate > best_rate) {
                best_rate = rate;
                best = k;
            }
        }
        return best;
    }

    int max_k_;
    std::vector<double> verify_us_;
    std::vector<int> seen_;  // observations per draft length
    double draft_step_us_ = -1.0;
    int draft_seen_ = 0;
    double successes_ = 0.0;
    double trials_ = 0.0;
    int64_t iter_ = 0;
};

}  // namespace mtpstream

#include "sampler.h"

#include <algorithm>
#include <cstddef>
#include <cmath>
#include <unordered_map>

namespace core {

static uint64_t splitmix64(uint64_t & x) {
    uint64_t z = (x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

sampler::sampler(const sampler_params & p) { reset(p); }

void sampler::reset(const sampler_params & p) {
    p_ = p;
    uint64_t x = p.seed;
    for (auto & w : s_) w = splitmix64(x);
    history_.clear();
}

void sampler::accept(int32_t token) {
    history_.push_back(token);
    if (p_.penalty_last_n < 0) return;  // -1: the whole history (what the sequence holds: the engine trims it on a rewind)
    const size_t keep = (size_t) p_.penalty_last_n;
    if (history_.size() > 4 * keep + 256) history_.erase(history_.begin(), history_.end() - (std::ptrdiff_t) keep);
}

uint64_t sampler::next_u64() {
    auto rotl = [](uint64_t v, int k) { return (v << k) | (v >> (64 - k)); };
    const uint64_t r = rotl(s_[1] * 5, 7) * 9;
    const uint64_t t = s_[1] << 17;
    s_[2] ^= s_[0]; s_[3] ^= s_[1]; s_[1] ^= s_[2]; s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = rotl(s_[3], 45);
    return r;
}

double sampler::next_double() { return (double) (next_u64() >> 11) * (1.0 / 9007199254740992.0); }

int32_t sampler::sample(const float * logits, int32_t n_vocab) {
    const bool penalties = p_.penalty_last_n != 0 && !history_.empty() &&
                           (p_.repeat_penalty != 1.0f || p_.presence_penalty != 0.0f || p_.frequency_penalty != 0.0f);
    const float * lg = logits;
    if (penalties) {
        work_.assign(logits, logits + n_vocab);
        std::unordered_map<int32_t, int> counts;
        const size_t n = std::min(history_.size(), (size_t) (p_.penalty_last_n < 0 ? history_.size() : (size_t) p_.penalty_last_n));
        for (size_t i = history_.size() - n; i < history_.size(); i++) counts[history_[i]]++;
        for (const auto & [id, c] : counts) {
            if (id < 0 || id >= n_vocab) continue;
            float & l = work_[id];
            // as llama.cpp: divide positive logits, multiply negative ones
            l = l <= 0 ? l * p_.repeat_penalty : l / p_.repeat_penalty;
            l -= (float) c * p_.frequency_penalty + (c > 0 ? 1.0f : 0.0f) * p_.presence_penalty;
        }
        lg = work_.data();
    }
    if (p_.temperature <= 0.0f) {
        int32_t best = 0;
        for (int32_t i = 1; i < n_vocab; i++) if (lg[i] > lg[best]) best = i;
        return best;
    }
    cands_.resize((size_t) n_vocab);
    for (int32_t i = 0; i < n_vocab; i++) cands_[i] = {lg[i], i};
    auto by_logit = [](const cand & a, const cand & b) { return a.logit > b.logit || (a.logit == b.logit && a.id < b.id); };
    size_t n = cands_.size();
    if (p_.top_k > 0 && (size_t) p_.top_k < n) {
        std::partial_sort(cands_.begin(), cands_.begin() + p_.top_k, cands_.end(), by_logit);
        n = (size_t) p_.top_k;
    } else {
        std::sort(cands_.begin(), cands_.end(), by_logit);
    }
    // softmax over the survivors (sorted, so the max is first)
    std::vector<double> & prob = prob_;
    prob.resize(n);
    double sum = 0;
    for (size_t i = 0; i < n; i++) { prob[i] = std::exp((double) cands_[i].logit - cands_[0].logit); sum += prob[i]; }
    for (auto & q : prob) q /= sum;
    if (p_.top_p < 1.0f) {
        double cum = 0;
        size_t keep = n;
        for (size_t i = 0; i < n; i++) {
            cum += prob[i];
            if (cum >= p_.top_p) { keep = i + 1; break; }
        }
        n = std::max<size_t>(keep, 1);
    }
    if (p_.min_p > 0.0f) {
        const double thr = prob[0] * p_.min_p;
        size_t keep = 1;
        while (keep < n && prob[keep] >= thr) keep++;
        n = keep;
    }
    // temperature, then draw
    double total = 0;
    for (size_t i = 0; i < n; i++) {
        prob[i] = std::exp(((double) cands_[i].logit - cands_[0].logit) / p_.temperature);
        total += prob[i];
    }
    double r = next_double() * total;
    for (size_t i = 0; i < n; i++) {
        r -= prob[i];
        if (r < 0) return cands_[i].id;
    }
    return cands_[n - 1].id;
}

} // namespace core

// The sampler's penalties (llama.cpp's rules): the window of the last penalty_last_n tokens, -1 for the
// whole history, and clear_history() + accept() replaying what a sequence holds after a rewind.
#include <vector>

#include "sampling/sampler.h"
#include "test-harness.h"

using namespace core;

TC_TEST("sampling: repeat penalty over the last N tokens, or the whole history with N = -1") {
    const int V = 8;
    // token 3 leads by a little; a repeat penalty of 2 on token 3 gives token 5 the lead
    std::vector<float> logits(V, 0.0f);
    logits[3] = 1.0f;
    logits[5] = 0.9f;
    sampler_params p;
    p.temperature = 0.0f;
    p.repeat_penalty = 2.0f;
    for (int last_n : {16, -1}) {
        p.penalty_last_n = last_n;
        sampler s(p);
        TC_CHECK(s.sample(logits.data(), V) == 3);
        s.accept(3);
        TC_CHECK(s.sample(logits.data(), V) == 5) << "N = " << last_n << ": token 3 was just seen";
        // 2000 other tokens later: outside a window of 16, still inside the whole history
        for (int i = 0; i < 2000; i++) s.accept(6);
        TC_CHECK(s.sample(logits.data(), V) == (last_n < 0 ? 5 : 3)) << "N = " << last_n << " after 2000 other tokens";
        // a rewind replays what the sequence holds: without token 3 there is nothing to penalize
        s.clear_history();
        for (int i = 0; i < 10; i++) s.accept(6);
        TC_CHECK(s.sample(logits.data(), V) == 3) << "N = " << last_n << " after clear_history";
    }
    p.penalty_last_n = 0;  // off
    sampler off(p);
    off.accept(3);
    TC_CHECK(off.sample(logits.data(), V) == 3);
}

// The MTP context's greedy draft, computed where the head's logits are.
//
// A llama.cpp backend sampler (the experimental backend-sampling interface) whose
// graph part is one argmax over the output row and which hands back only that token
// id: llama.cpp then copies 4 bytes per draft step to the host instead of the row's
// n_vocab logits (llama.cpp's own greedy sampler leaves the row in its outputs, so
// the row is still copied). Over RPC that is a GET_TENSOR of 4 bytes instead of
// 4 * n_vocab per draft step (scripts/rpc_traffic.py).
//
// Ties: ggml's argmax keeps the last of equal maxima, greedy_token (sampler.hpp) the
// first; only the drafts can differ, never the output (the target verifies them).
#pragma once

#include "grammar_build.hpp"
#include "llama.h"

namespace mtpstream {

// A sampler chain holding the argmax sampler, to attach with llama_set_sampler.
SamplerPtr make_device_argmax();

// After llama_set_sampler(ctx, seq, chain): whether the device that holds the
// logits computes the argmax (llama.cpp attaches a chain it cannot offload anyway,
// and then reads no token: the caller must detach it and read logits).
bool device_argmax_ready(llama_sampler * chain);

}  // namespace mtpstream

// Building a call's GBNF grammar sampler, shared by the engine (which builds it
// once to report a parse error when the call is submitted) and the grammar host
// process (which builds the copy the call's steps run on; see grammar_host.hpp).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "llama.h"

namespace mtpstream {

struct SamplerDeleter {
    void operator()(llama_sampler * s) const { llama_sampler_free(s); }
};
using SamplerPtr = std::unique_ptr<llama_sampler, SamplerDeleter>;

// A grammar as a call gives it: GBNF text with a "root" rule and, for a lazy
// grammar, the trigger words from which on it holds.
struct GrammarSpec {
    std::string text;
    std::vector<std::string> triggers;
    bool lazy() const { return !triggers.empty(); }
};

// The grammar sampler of `spec` (lazy when it has trigger words: a word that is one
// token, special ones included, triggers on the token; any other on its text).
// Null when the grammar does not parse; `error` then holds llama.cpp's parse error
// line (which it prints to stderr: captured here), or is empty.
SamplerPtr build_grammar(const GrammarSpec & spec, const llama_vocab * vocab, std::string & error);

}  // namespace mtpstream

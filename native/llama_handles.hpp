// Owning handles for llama.cpp objects the engine creates.
#pragma once

#include <memory>

#include "llama.h"

namespace mtpstream {

struct ContextDeleter {
    void operator()(llama_context * c) const { llama_free(c); }
};
using ContextPtr = std::unique_ptr<llama_context, ContextDeleter>;

}  // namespace mtpstream

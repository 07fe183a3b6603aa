// Errors travel as values inside native code; the bindings raise them in Python as
// NativeError(ErrorCode, message, field), ErrorCode bound as mtpstream._native.ErrorCode.
#pragma once

#include <string>
#include <utility>

namespace mtpstream {

enum class ErrorCode : int {
    ok = 0,
    invalid_argument = 1,  // a bad option or input (Python: InvalidOptionError / ValueError)
    model_load = 2,        // the model file could not be loaded (ModelLoadError)
    no_mtp_head = 3,       // MTP requested on a model that has no usable head (NoMTPHeadError)
    context = 4,           // a llama_context could not be created (MTPError)
    context_overflow = 5,  // the prompt does not fit the context (ContextOverflowError)
    generation = 6,        // decoding failed mid-generation (GenerationError)
    closed = 7,            // the session or model was closed (SessionClosedError)
    busy = 8,              // the session already has work and wait=False (SessionBusyError)
    worker_lost = 9,       // an RPC worker holding part of the model was lost (WorkerLostError)
};

struct Status {
    ErrorCode code = ErrorCode::ok;
    std::string message;
    std::string field;  // the option at fault (invalid_argument), empty if none

    static Status ok_status() { return {}; }
    static Status error(ErrorCode c, std::string msg, std::string field = "") {
        return {c, std::move(msg), std::move(field)};
    }
    bool ok() const { return code == ErrorCode::ok; }
};

}  // namespace mtpstream

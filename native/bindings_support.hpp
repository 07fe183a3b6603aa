// What the binding files share: the GIL release that is safe at interpreter exit
// and the raising of a Status as mtpstream._native.NativeError (bindings.cpp).
#pragma once

#include <Python.h>
#include <nanobind/nanobind.h>

#include <memory>

#include "model.hpp"
#include "status.hpp"

namespace mtpstream {

// nb::gil_scoped_release for calls into llama.cpp that never starts one once exit
// has begun and never takes the GIL back where finalization could kill the thread.
class ReleaseGil {
public:
    ReleaseGil();
    ~ReleaseGil();
    ReleaseGil(const ReleaseGil &) = delete;
    ReleaseGil & operator=(const ReleaseGil &) = delete;

private:
    PyThreadState * state_ = nullptr;
};

// Python holds a model only through this handle (see bindings.cpp).
struct ModelHandle {
    std::shared_ptr<Model> p;
};

[[noreturn]] void raise_status(const Status & st);

// The draft session's classes: Batch, Context, DraftSession (bindings_draft.cpp).
void bind_draft(nanobind::module_ & m);

}  // namespace mtpstream

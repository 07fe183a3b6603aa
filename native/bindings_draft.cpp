// Bindings of the low-level draft session: Batch, Context (UserContext) and
// DraftSession. Every call that reaches llama.cpp or waits for a lock releases the
// GIL first; a batch is copied (GIL held) before that, so another thread adding to
// it meanwhile cannot race with the decode.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/shared_ptr.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <algorithm>
#include <memory>
#include <new>
#include <utility>
#include <vector>

#include "batch.hpp"
#include "bindings_support.hpp"
#include "draft_session.hpp"
#include "model.hpp"
#include "user_context.hpp"

namespace nb = nanobind;
using namespace nb::literals;

namespace mtpstream {

namespace {

struct ContextHandle {
    std::shared_ptr<UserContext> p;
};
struct DraftSessionHandle {
    std::shared_ptr<DraftSession> p;
};

using FloatArray = nb::ndarray<nb::numpy, float, nb::ndim<1>>;

std::unique_ptr<Batch> snapshot(const Batch & b) {
    auto copy = std::make_unique<Batch>(std::max(b.size(), 1), 0);
    for (int32_t i = 0; i < b.size(); ++i) {
        copy->add(b.token(i), b.pos(i), b.seq(i), b.output(i));
    }
    return copy;
}

void check(const Status & st) {
    if (!st.ok()) {
        raise_status(st);
    }
}

FloatArray to_array(std::vector<float> && v) {
    auto * owned = new std::vector<float>(std::move(v));
    nb::capsule owner(owned, [](void * p) noexcept { delete static_cast<std::vector<float> *>(p); });
    return FloatArray(owned->data(), {owned->size()}, owner);
}

template <typename Fn>
FloatArray row_of(const ContextHandle & h, int32_t i, Fn fn) {
    std::shared_ptr<UserContext> c = h.p;
    std::vector<float> out;
    Status st;
    {
        ReleaseGil release;
        st = ((*c).*fn)(i, out);
    }
    check(st);
    return to_array(std::move(out));
}

template <typename Fn>
void unlocked(Fn && fn) {
    Status st;
    {
        ReleaseGil release;
        st = fn();
    }
    check(st);
}

void bind_batch(nb::module_ & m) {
    nb::class_<Batch>(m, "Batch")
        .def("__init__", [](Batch * b, int32_t capacity) { new (b) Batch(capacity, 0); }, "capacity"_a)
        .def("add", [](Batch & b, int32_t token, int32_t pos, int32_t seq, bool output) {
            return b.add(token, pos, seq, output);
        }, "token"_a, "pos"_a, "seq_id"_a, "logits"_a)
        .def("clear", &Batch::clear)
        .def_prop_ro("size", &Batch::size)
        .def_prop_ro("capacity", &Batch::capacity)
        .def("entry", [](const Batch & b, int32_t i) {
            return nb::make_tuple(b.token(i), b.pos(i), b.seq(i), b.output(i));
        }, "i"_a);
}

void bind_context_options(nb::module_ & m) {
    nb::enum_<ContextKind>(m, "ContextKind").value("target", ContextKind::target).value("mtp", ContextKind::mtp);
    nb::class_<UserContextOptions>(m, "UserContextOptions")
        .def(nb::init<>())
        .def_rw("kind", &UserContextOptions::kind)
        .def_rw("n_ctx", &UserContextOptions::n_ctx)
        .def_rw("n_seq", &UserContextOptions::n_seq)
        .def_rw("n_batch", &UserContextOptions::n_batch)
        .def_rw("n_ubatch", &UserContextOptions::n_ubatch)
        .def_rw("n_rs_seq", &UserContextOptions::n_rs_seq)
        .def_rw("n_threads", &UserContextOptions::n_threads)
        .def_rw("n_threads_batch", &UserContextOptions::n_threads_batch)
        .def_rw("flash_attn", &UserContextOptions::flash_attn)
        .def_rw("type_k", &UserContextOptions::type_k)
        .def_rw("type_v", &UserContextOptions::type_v);
}

// Context.adopt: take over a llama_context made by llama-cpp-python on `model`.
ContextHandle adopt_context(const ModelHandle & model, uintptr_t address, ContextKind kind) {
    Status st;
    std::shared_ptr<UserContext> c = UserContext::adopt(model.p, reinterpret_cast<llama_context *>(address), kind, st);
    if (!c) {
        raise_status(st);
    }
    return ContextHandle{std::move(c)};
}

void bind_context(nb::module_ & m) {
    nb::class_<ContextHandle>(m, "Context")
        .def_static("create", [](const ModelHandle & model, const UserContextOptions & opts) {
            Status st;
            std::shared_ptr<UserContext> c;
            {
                ReleaseGil release;
                c = UserContext::create(model.p, opts, st);
            }
            if (!c) {
                raise_status(st);
            }
            return ContextHandle{std::move(c)};
        }, "model"_a, "options"_a)
        .def_static("adopt", &adopt_context, "model"_a, "address"_a, "kind"_a)
        .def("decode", [](ContextHandle & h, const Batch & batch) {
            std::shared_ptr<UserContext> c = h.p;
            std::unique_ptr<Batch> copy = snapshot(batch);
            unlocked([&] { return c->decode(*copy); });
        }, "batch"_a)
        .def("logits", [](const ContextHandle & h, int32_t i) { return row_of(h, i, &UserContext::logits); }, "i"_a)
        .def("hidden", [](const ContextHandle & h, int32_t i) { return row_of(h, i, &UserContext::hidden); }, "i"_a)
        .def("seq_rm", [](ContextHandle & h, int32_t seq, int32_t p0, int32_t p1) {
            std::shared_ptr<UserContext> c = h.p;
            unlocked([&] { return c->seq_rm(seq, p0, p1); });
        }, "seq_id"_a, "p0"_a, "p1"_a)
        .def("seq_cp", [](ContextHandle & h, int32_t src, int32_t dst, int32_t p0, int32_t p1) {
            std::shared_ptr<UserContext> c = h.p;
            unlocked([&] { return c->seq_cp(src, dst, p0, p1); });
        }, "src"_a, "dst"_a, "p0"_a, "p1"_a)
        .def("seq_pos_max", [](ContextHandle & h, int32_t seq) {
            std::shared_ptr<UserContext> c = h.p;
            llama_pos out = -1;
            unlocked([&] { return c->seq_pos_max(seq, out); });
            return out;
        }, "seq_id"_a)
        .def("close", [](ContextHandle & h) {
            std::shared_ptr<UserContext> c = h.p;
            ReleaseGil release;
            c->close();
        })
        .def_prop_ro("closed", [](ContextHandle & h) {
            std::shared_ptr<UserContext> c = h.p;
            ReleaseGil release;
            return c->is_closed();
        })
        .def_prop_ro("kind", [](const ContextHandle & h) { return h.p->kind(); })
        .def_prop_ro("n_ctx", [](const ContextHandle & h) { return h.p->n_ctx(); })
        .def_prop_ro("n_seq", [](const ContextHandle & h) { return h.p->n_seq(); })
        .def_prop_ro("n_batch", [](const ContextHandle & h) { return h.p->n_batch(); })
        .def_prop_ro("n_vocab", [](const ContextHandle & h) { return h.p->n_vocab(); })
        .def_prop_ro("n_embd", [](const ContextHandle & h) { return h.p->n_embd(); });
}

void bind_session(nb::module_ & m) {
    nb::class_<DraftSessionHandle>(m, "DraftSession")
        .def_static("create", [](const ContextHandle & target, const ContextHandle & draft, int32_t n_seq,
                                 int32_t n_draft_max) {
            if (target.p == draft.p) {
                raise_status(Status::error(ErrorCode::invalid_argument, "target and draft are the same context",
                                           "draft"));
            }
            Status st;
            std::shared_ptr<DraftSession> s;
            {
                ReleaseGil release;
                s = DraftSession::create(target.p, draft.p, n_seq, n_draft_max, st);
            }
            if (!s) {
                raise_status(st);
            }
            return DraftSessionHandle{std::move(s)};
        }, "target"_a, "draft"_a, "n_seq"_a, "n_draft_max"_a)
        .def("begin", [](DraftSessionHandle & h, int32_t seq, const std::vector<llama_token> & prompt) {
            std::shared_ptr<DraftSession> s = h.p;
            unlocked([&] { return s->begin(seq, prompt); });
        }, "seq_id"_a, "prompt"_a)
        .def("process", [](DraftSessionHandle & h, const Batch & batch) {
            std::shared_ptr<DraftSession> s = h.p;
            std::unique_ptr<Batch> copy = snapshot(batch);
            unlocked([&] { return s->process(*copy); });
        }, "batch"_a)
        .def("draft", [](DraftSessionHandle & h, int32_t seq, int32_t n_past, int32_t id_last, int32_t n_draft) {
            std::shared_ptr<DraftSession> s = h.p;
            std::vector<llama_token> out;
            unlocked([&] { return s->draft(seq, n_past, id_last, n_draft, out); });
            return out;
        }, "seq_id"_a, "n_past"_a, "id_last"_a, "n_draft"_a)
        .def("accept", [](DraftSessionHandle & h, int32_t seq, int32_t n_accepted) {
            std::shared_ptr<DraftSession> s = h.p;
            unlocked([&] { return s->accept(seq, n_accepted); });
        }, "seq_id"_a, "n_accepted"_a)
        .def("close", [](DraftSessionHandle & h) {
            std::shared_ptr<DraftSession> s = h.p;
            ReleaseGil release;
            s->close();
        })
        .def_prop_ro("closed", [](DraftSessionHandle & h) {
            std::shared_ptr<DraftSession> s = h.p;
            ReleaseGil release;
            return s->closed();
        })
        .def_prop_ro("n_seq", [](const DraftSessionHandle & h) { return h.p->n_seq(); })
        .def_prop_ro("n_draft_max", [](const DraftSessionHandle & h) { return h.p->n_draft_max(); });
}

}  // namespace

void bind_draft(nb::module_ & m) {
    bind_batch(m);
    bind_context_options(m);
    bind_context(m);
    bind_session(m);
}

}  // namespace mtpstream

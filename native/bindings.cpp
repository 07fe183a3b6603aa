// Python bindings (nanobind). Thin by design: validation lives in Python
// (pydantic) and the engine; errors come back as Status values and are raised
// here as mtpstream._native.NativeError(code: ErrorCode, message, field).
#include <nanobind/nanobind.h>
#include <nanobind/stl/function.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <thread>
#include <optional>
#include <string>
#include <vector>

#include "bindings_support.hpp"
#include "engine.hpp"
#include "job.hpp"
#include "log_bridge.hpp"
#include "model.hpp"
#include "rpc.hpp"
#include "runtime.hpp"
#include "stats.hpp"

namespace nb = nanobind;
using namespace nb::literals;
using namespace mtpstream;

namespace {

PyObject * native_error_type = nullptr;

// Interpreter exit. A thread that takes the GIL back once the interpreter is
// finalizing (a daemon thread still inside a native call at exit) is
// pthread_exit()ed by Python; that unwind through C++ frames (ours, nanobind's
// catch (...)) ends in std::terminate (SIGABRT). So exit begins with begin_exit()
// (from an atexit handler, before finalization), which waits, GIL released, until no
// thread is inside a native call. A thread stays counted in g_in_native until it
// holds the GIL again, so that wait also covers a thread already on its way back
// to the GIL; once exit has begun, a thread parks instead of entering llama.cpp or
// taking the GIL back.
std::atomic<bool> g_exiting{false};
std::atomic<int> g_in_native{0};

bool interpreter_finalizing() {
#if PY_VERSION_HEX >= 0x030D0000
    return Py_IsFinalizing() != 0;
#else
    return _Py_IsFinalizing() != 0;
#endif
}

bool exiting() { return g_exiting.load() || interpreter_finalizing(); }

[[noreturn]] void park_forever() {
    for (;;) {
        std::this_thread::sleep_for(std::chrono::hours(24));
    }
}

}  // namespace

namespace mtpstream {

ReleaseGil::ReleaseGil() {
    // begin_exit() sets g_exiting holding the GIL, as this thread does now, so
    // this check cannot race with it
    if (g_exiting.load()) {
        (void) PyEval_SaveThread();
        park_forever();
    }
    g_in_native.fetch_add(1);
    state_ = PyEval_SaveThread();
}

ReleaseGil::~ReleaseGil() {
    if (exiting()) {
        g_in_native.fetch_sub(1);
        park_forever();
    }
    // still counted: a begin_exit() that starts now waits (GIL released) until
    // this thread has the GIL back, so finalization cannot catch it in take_gil
    PyEval_RestoreThread(state_);
    g_in_native.fetch_sub(1);
}

void raise_status(const Status & st) {
    nb::object args = nb::make_tuple(nb::cast(st.code), st.message, st.field);
    PyErr_SetObject(native_error_type, args.ptr());
    throw nb::python_error();
}

}  // namespace mtpstream

namespace {

// Start exiting and wait (GIL released, at most timeout_s) until no other thread is
// inside a native call or on its way back to the GIL; true if none is.
bool begin_exit(double timeout_s) {
    g_exiting.store(true);
    PyThreadState * st = PyEval_SaveThread();
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
    while (g_in_native.load() > 0 && std::chrono::steady_clock::now() < deadline) {
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    PyEval_RestoreThread(st);
    return g_in_native.load() == 0;
}

// Python holds native objects only through these handles. The worker thread
// shares ownership of engines/models/jobs through plain std::shared_ptr; it must
// never hold a shared_ptr made from a Python object, whose deleter would take
// the GIL on the worker (a deadlock risk, and fatal during interpreter exit).
struct EngineHandle {
    std::shared_ptr<Engine> p;
};
struct JobHandle {
    std::shared_ptr<Job> p;
};

ModelHandle load_model(const std::string & path, std::optional<int> n_gpu_layers, bool load_mtp,
                                  bool use_mmap, std::optional<bool> repack, int n_cpu_moe,
                                  std::optional<nb::callable> progress, std::vector<std::string> rpc,
                                  std::vector<float> tensor_split, double rpc_timeout, int host_tail_from,
                                  int n_layer_all) {
    ModelLoadOptions opts;
    opts.host_tail_from = host_tail_from;
    opts.n_layer_all = n_layer_all;
    opts.rpc_timeout_ms = static_cast<int>(rpc_timeout * 1000.0);
    opts.rpc = std::move(rpc);
    opts.tensor_split = std::move(tensor_split);
    opts.n_cpu_moe = n_cpu_moe;
    opts.n_gpu_layers = n_gpu_layers;
    opts.load_mtp = load_mtp;
    opts.use_mmap = use_mmap;
    opts.repack = repack;
    std::optional<nb::python_error> callback_error;
    // a load in progress when the interpreter exits stops at the next progress report,
    // so begin_exit() never waits long for it
    opts.progress = [](float) { return !exiting(); };
    if (progress.has_value()) {
        nb::callable cb = *progress;
        opts.progress = [cb, &callback_error](float p) -> bool {
            if (exiting()) {
                return false;  // stop loading: the process is exiting
            }
            nb::gil_scoped_acquire gil;
            if (callback_error.has_value()) {
                return false;
            }
            try {
                nb::object r = cb(p);
                return r.is_none() || nb::cast<bool>(r);
            } catch (nb::python_error & e) {
                callback_error.emplace(std::move(e));
                return false;
            } catch (const std::exception &) {
                return false;
            }
        };
    }
    Status st;
    std::shared_ptr<Model> model;
    {
        ReleaseGil release;
        model = Model::load(path, opts, st);
    }
    if (callback_error.has_value()) {
        callback_error->restore();
        throw nb::python_error();
    }
    if (!model) {
        raise_status(st);
    }
    return ModelHandle{std::move(model)};
}

// Runs the RPC server (GIL released) until it stops; returns why it stopped.
std::string serve_rpc(const std::string & endpoint, const std::string & cache_dir, int n_threads, uint64_t mem_bytes) {
    Status st;
    {
        ReleaseGil release;
        rpc_serve(endpoint, cache_dir, n_threads, mem_bytes, st);
    }
    return st.message;
}

std::vector<Event> drain_job(JobHandle & job) { return job.p->drain(); }

// StatsSnapshot, one read-only attribute per field of stats.hpp's list, and the list
// itself as STATS_FIELDS: (name, kind, metric, help) tuples in the list's order.
void bind_stats(nb::module_ & m) {
    nb::class_<StatsSnapshot> cls(m, "StatsSnapshot");
#define MTPSTREAM_STATS_BIND(name, type, kind, metric, help) cls.def_ro(#name, &StatsSnapshot::name);
    MTPSTREAM_STATS_FIELDS(MTPSTREAM_STATS_BIND)
#undef MTPSTREAM_STATS_BIND
    nb::list fields;
    for (const StatsField & f : kStatsFields) {
        fields.append(nb::make_tuple(f.name, f.kind, f.metric, f.help));
    }
    m.attr("STATS_FIELDS") = nb::tuple(fields);
}

}  // namespace

NB_MODULE(_native, m) {
    m.doc() = "mtpstream native engine (llama.cpp MTP speculative decoding)";
    // objects still referenced by daemon threads at exit are reclaimed by the OS;
    // nanobind's leak report would only alarm users
    nb::set_leak_warnings(false);
    native_error_type = PyErr_NewException("mtpstream._native.NativeError", PyExc_RuntimeError, nullptr);
    m.attr("NativeError") = nb::handle(native_error_type);
    // NativeError(code, message, field): Python maps `code` to its exception class
    nb::enum_<ErrorCode>(m, "ErrorCode")
        .value("ok", ErrorCode::ok)
        .value("invalid_argument", ErrorCode::invalid_argument)
        .value("model_load", ErrorCode::model_load)
        .value("no_mtp_head", ErrorCode::no_mtp_head)
        .value("context", ErrorCode::context)
        .value("context_overflow", ErrorCode::context_overflow)
        .value("generation", ErrorCode::generation)
        .value("closed", ErrorCode::closed)
        .value("busy", ErrorCode::busy)
        .value("worker_lost", ErrorCode::worker_lost);
    m.attr("LLAMA_DEFAULT_SEED") = static_cast<uint32_t>(LLAMA_DEFAULT_SEED);

    m.def("cpu_offers_amx_buffer", &cpu_offers_amx_buffer);
    m.def("rpc_available", &rpc_available);
    m.attr("RPC_PROTO_MAJOR") = rpc_protocol_major();
    m.def("rpc_serve", &serve_rpc, "endpoint"_a, "cache_dir"_a, "n_threads"_a, "mem_bytes"_a);

    nb::class_<LogBridge>(m, "LogBridge")
        .def(nb::init<>())
        .def("install", &LogBridge::install)
        .def("set_min_level", &LogBridge::set_min_level, "level"_a)
        .def("drain", &LogBridge::drain);

    nb::class_<ModelHandle>(m, "Model")
        .def_static("load", &load_model, "path"_a, "n_gpu_layers"_a.none(), "load_mtp"_a, "use_mmap"_a,
                    "repack"_a.none(), "n_cpu_moe"_a, "progress"_a.none(), "rpc"_a, "tensor_split"_a, "rpc_timeout"_a,
                    "host_tail_from"_a, "n_layer_all"_a)
        .def_prop_ro("path", [](const ModelHandle & h) { return h.p->path(); })
        .def_prop_ro("address", [](const ModelHandle & h) { return reinterpret_cast<uintptr_t>(h.p->get()); })
        .def_prop_ro("load_mtp", [](const ModelHandle & h) { return h.p->load_mtp(); })
        .def_prop_ro("repack", [](const ModelHandle & h) { return h.p->repack(); })
        .def_prop_ro("host_tail", [](const ModelHandle & h) { return h.p->host_tail(); })
        .def_prop_ro("rpc_loss", [](const ModelHandle & h) { return h.p->rpc_loss(); })
        .def_prop_ro("rpc_relays", [](const ModelHandle & h) { return h.p->rpc_relay_endpoints(); })
        .def_prop_ro("n_vocab", [](const ModelHandle & h) { return h.p->n_vocab(); })
        .def_prop_ro("n_embd", [](const ModelHandle & h) { return h.p->n_embd(); })
        .def_prop_ro("n_layer", [](const ModelHandle & h) { return h.p->n_layer(); })
        .def_prop_ro("n_layer_nextn", [](const ModelHandle & h) { return h.p->n_layer_nextn(); })
        .def_prop_ro("n_ctx_train", [](const ModelHandle & h) { return h.p->n_ctx_train(); })
        .def_prop_ro("size_bytes", [](const ModelHandle & h) { return h.p->size_bytes(); })
        .def_prop_ro("n_params", [](const ModelHandle & h) { return h.p->n_params(); })
        .def_prop_ro("description", [](const ModelHandle & h) { return h.p->description(); })
        .def_prop_ro("chat_template", [](const ModelHandle & h) { return h.p->chat_template(); })
        .def_prop_ro("bos", [](const ModelHandle & h) { return h.p->bos(); })
        .def_prop_ro("eos", [](const ModelHandle & h) { return h.p->eos(); })
        .def("metadata", [](const ModelHandle & h) { return h.p->metadata(); })
        .def("is_eog", [](const ModelHandle & h, int t) { return h.p->is_eog(t); }, "token"_a)
        .def("tokenize", [](const ModelHandle & h, const std::string & text, bool add_special, bool parse_special) {
            // the text is a C++ copy and the model is held here: long prompts tokenize
            // without holding the GIL (the server's event loop keeps running)
            const std::shared_ptr<Model> model = h.p;
            ReleaseGil release;
            return model->tokenize(text, add_special, parse_special);
        }, "text"_a, "add_special"_a, "parse_special"_a)
        .def("detokenize", [](const ModelHandle & h, const std::vector<llama_token> & ids) {
            const std::string text = h.p->detokenize(ids);
            return nb::bytes(text.data(), text.size());
        }, "ids"_a)
        .def("token_text", [](const ModelHandle & h, int token) { return h.p->token_text(token); }, "token"_a)
        .def("token_to_piece", [](const ModelHandle & h, int token, bool special) {
            const std::string piece = h.p->token_to_piece(token, special);
            return nb::bytes(piece.data(), piece.size());
        }, "token"_a, "special"_a = false);

    nb::class_<Runtime>(m, "Runtime")
        .def(nb::init<>())
        .def("shutdown", [](Runtime & rt) {
            nb::gil_scoped_release release;  // from the atexit handler, before begin_exit()
            rt.shutdown();
        });
    m.def("begin_exit", &begin_exit, "timeout_s"_a);

    nb::class_<JobHandle>(m, "Job")
        .def("drain", &drain_job)
        .def("cancel", [](JobHandle & j) { j.p->request_cancel(); })
        .def_prop_ro("finished", [](const JobHandle & j) { return j.p->finished(); });

    nb::enum_<Fault>(m, "Fault")
        .value("none", Fault::none)
        .value("masked_draft_rows", Fault::masked_draft_rows)
        .value("skip_draft_catch_up", Fault::skip_draft_catch_up);

    nb::enum_<EventKind>(m, "EventKind")
        .value("token", EventKind::token)
        .value("stats", EventKind::stats)
        .value("done", EventKind::done)
        .value("eog", EventKind::eog)
        .value("error", EventKind::error)
        .value("cancelled", EventKind::cancelled);

    nb::enum_<Rollback>(m, "Rollback")
        .value("snapshots", Rollback::snapshots)
        .value("replay", Rollback::replay)
        .value("automatic", Rollback::automatic);

    nb::enum_<Verify>(m, "Verify")
        .value("match", Verify::match)
        .value("rejection", Verify::rejection);

    nb::class_<Usage>(m, "Usage")
        .def_ro("prompt_tokens", &Usage::prompt_tokens)
        .def_ro("completion_tokens", &Usage::completion_tokens)
        .def_ro("drafts_generated", &Usage::drafts_generated)
        .def_ro("drafts_accepted", &Usage::drafts_accepted)
        .def_ro("cached_tokens", &Usage::cached_tokens);

    nb::class_<TokenProb>(m, "TokenProb")
        .def_ro("token", &TokenProb::token)
        .def_ro("logprob", &TokenProb::logprob)
        .def_prop_ro("piece", [](const TokenProb & p) { return nb::bytes(p.piece.data(), p.piece.size()); });

    nb::class_<Event>(m, "Event")
        .def_ro("kind", &Event::kind)
        .def_ro("token", &Event::token)
        .def_prop_ro("text", [](const Event & e) { return nb::bytes(e.text.data(), e.text.size()); })
        .def_ro("finish_reason", &Event::finish_reason)
        .def_prop_ro("stop", [](const Event & e) { return nb::bytes(e.stop.data(), e.stop.size()); })
        .def_ro("usage", &Event::usage)
        .def_ro("error", &Event::error)
        .def_ro("error_code", &Event::error_code)
        .def_ro("logprobs", &Event::logprobs);

    bind_stats(m);
    bind_draft(m);

    nb::class_<Runtime::Counts>(m, "SequenceCounts")
        .def_ro("active", &Runtime::Counts::active)
        .def_ro("queued", &Runtime::Counts::queued);

    nb::class_<SlotView>(m, "SlotView")
        .def_ro("id", &SlotView::id)
        .def_ro("busy", &SlotView::busy)
        .def_ro("n_prompt", &SlotView::n_prompt)
        .def_ro("n_cached", &SlotView::n_cached)
        .def_ro("n_decoded", &SlotView::n_decoded)
        .def_ro("n_past", &SlotView::n_past)
        .def_ro("cache_tokens", &SlotView::cache_tokens)
        .def_ro("cache_extendable", &SlotView::cache_extendable)
        .def_ro("cache_checkpoints", &SlotView::cache_checkpoints);

    nb::class_<ContextOptions>(m, "ContextOptions")
        .def(nb::init<>())
        .def_rw("n_ctx", &ContextOptions::n_ctx)
        .def_rw("n_seq", &ContextOptions::n_seq)
        .def_rw("n_batch", &ContextOptions::n_batch)
        .def_rw("n_ubatch", &ContextOptions::n_ubatch)
        .def_rw("n_threads", &ContextOptions::n_threads)
        .def_rw("n_threads_batch", &ContextOptions::n_threads_batch)
        .def_rw("flash_attn", &ContextOptions::flash_attn)
        .def_rw("type_k", &ContextOptions::type_k)
        .def_rw("type_v", &ContextOptions::type_v)
        .def_rw("offload_kqv", &ContextOptions::offload_kqv)
        .def_rw("prompt_cache", &ContextOptions::prompt_cache)
        .def_rw("checkpoint_bytes", &ContextOptions::checkpoint_bytes)
        .def_rw("rollback", &ContextOptions::rollback)
        .def_rw("grammar_host", &ContextOptions::grammar_host);

    nb::class_<SamplingOptions>(m, "SamplingOptions")
        .def(nb::init<>())
        .def_rw("temp", &SamplingOptions::temp)
        .def_rw("top_k", &SamplingOptions::top_k)
        .def_rw("top_p", &SamplingOptions::top_p)
        .def_rw("min_p", &SamplingOptions::min_p)
        .def_rw("seed", &SamplingOptions::seed)
        .def_rw("penalty_last_n", &SamplingOptions::penalty_last_n)
        .def_rw("penalty_repeat", &SamplingOptions::penalty_repeat)
        .def_rw("penalty_freq", &SamplingOptions::penalty_freq)
        .def_rw("penalty_present", &SamplingOptions::penalty_present)
        .def_rw("logit_bias", &SamplingOptions::logit_bias)
        .def_rw("grammar", &SamplingOptions::grammar)
        .def_rw("grammar_triggers", &SamplingOptions::grammar_triggers)
        .def_rw("grammar_step_budget_us", &SamplingOptions::grammar_step_budget_us)
        .def_rw("verify", &SamplingOptions::verify);

    nb::class_<GenerationOptions>(m, "GenerationOptions")
        .def(nb::init<>())
        .def_rw("prompt", &GenerationOptions::prompt)
        .def_rw("max_tokens", &GenerationOptions::max_tokens)
        .def_rw("sampling", &GenerationOptions::sampling)
        .def_rw("stop", &GenerationOptions::stop)
        .def_rw("emit_stats_every", &GenerationOptions::emit_stats_every)
        .def_rw("cache_prompt", &GenerationOptions::cache_prompt)
        .def_rw("n_logprobs", &GenerationOptions::n_logprobs)
        .def_rw("checkpoint_hint", &GenerationOptions::checkpoint_hint);

    nb::class_<EngineHandle>(m, "Engine")
        .def_static(
            "create",
            [](const ModelHandle & target, const ModelHandle * draft, int n_draft, bool auto_draft,
               const ContextOptions & options) {
                Status st;
                std::shared_ptr<Engine> e;
                {
                    ReleaseGil release;
                    e = Engine::create(target.p, draft != nullptr ? draft->p : nullptr, n_draft, auto_draft, options,
                                       st);
                }
                if (!e) {
                    raise_status(st);
                }
                return EngineHandle{std::move(e)};
            },
            "target"_a, "draft"_a.none(), "n_draft"_a, "auto_draft"_a, "options"_a)
        .def_prop_ro("n_draft", [](const EngineHandle & h) { return h.p->n_draft(); })
        .def_prop_ro("auto_draft", [](const EngineHandle & h) { return h.p->auto_draft(); })
        .def_prop_ro("rollback", [](const EngineHandle & h) { return std::string(h.p->rollback()); })
        .def_prop_ro("verify_cost_ratio", [](const EngineHandle & h) { return h.p->verify_cost_ratio(); })
        .def_prop_ro("n_ctx", [](const EngineHandle & h) { return h.p->n_ctx(); })
        .def_prop_ro("n_seq", [](const EngineHandle & h) { return h.p->n_seq(); })
        .def_prop_ro("n_batch", [](const EngineHandle & h) { return h.p->n_batch(); })
        .def_prop_ro("n_ubatch", [](const EngineHandle & h) { return h.p->n_ubatch(); })
        .def_prop_ro("state_bytes", [](const EngineHandle & h) { return h.p->state_bytes(); })
        .def_prop_rw(
            "fault", [](const EngineHandle & h) { return h.p->fault(); },
            [](EngineHandle & h, Fault f) { h.p->set_fault(f); })
        .def("stats", [](const EngineHandle & e) { return snapshot(e.p->stats()); })
        .def("sequences", [](const EngineHandle & e, const Runtime & rt) { return rt.counts(e.p.get()); },
             "runtime"_a)
        .def("slots", [](const EngineHandle & e) { return e.p->slots(); })
        .def(
            "submit",
            [](const EngineHandle & handle, Runtime & rt, GenerationOptions options, int wake_fd, bool wait,
               int capacity) {
                const std::shared_ptr<Engine> & self = handle.p;
                if (self->closed()) {
                    if (wake_fd >= 0) {
                        ::close(wake_fd);
                    }
                    raise_status(Status::error(ErrorCode::closed, "the session is closed"));
                }
                Status st;
                auto gen = self->prepare(std::move(options), st);
                if (!gen) {
                    if (wake_fd >= 0) {
                        ::close(wake_fd);  // the job would have owned it
                    }
                    raise_status(st);
                }
                auto job = std::make_shared<Job>(self, std::move(gen), wake_fd, static_cast<std::size_t>(capacity),
                                                 self->events_per_step(), rt.worker_waker());
                st = rt.submit(job, wait);
                if (!st.ok()) {
                    raise_status(st);
                }
                return JobHandle{std::move(job)};
            },
            "runtime"_a, "options"_a, "wake_fd"_a, "wait"_a, "capacity"_a)
        .def("close", [](EngineHandle & self, Runtime & rt) {
            self.p->mark_closed();
            ReleaseGil release;
            rt.cancel_and_wait(self.p.get());
        }, "runtime"_a)
        .def_prop_ro("closed", [](const EngineHandle & h) { return h.p->closed(); });
}

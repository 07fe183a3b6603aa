// The grammar host process (see grammar_host.hpp): `_grammar_host MODEL MEMORY_BYTES`.
// It loads MODEL's vocabulary only, caps its address space at MEMORY_BYTES, replies
// "ready" with the vocabulary size, then answers the requests of grammar_wire.hpp
// on standard input/output until its input closes. It keeps each open grammar by
// the engine's id; a grammar that runs out of memory under the cap is dropped and
// answered with an error, and the host goes on. A step that never returns is the
// engine's to end (it kills this process past its deadline).
#include <sys/resource.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif

#include <cerrno>
#include <cmath>
#include <csignal>
#include <cstdlib>
#include <new>
#include <unordered_map>
#include <vector>

#include "clock.hpp"
#include "fd_io.hpp"
#include "grammar_build.hpp"
#include "grammar_wire.hpp"

namespace mtpstream {
namespace {

// Read (out false) or write n bytes of p on a blocking descriptor; false at its end or on an error.
bool move_all(int fd, char * p, size_t n, bool out) {
    return mtpstream::move_all([fd, out](char * q, size_t k) { return out ? ::write(fd, q, k) : ::read(fd, q, k); }, p, n);
}

bool reply(wire::Status status, const std::string & payload) {
    std::string message = wire::header(static_cast<uint8_t>(status), static_cast<uint32_t>(payload.size())) + payload;
    return move_all(1, message.data(), message.size(), true);
}

bool reply_cpu(wire::Status status, int64_t cpu_us) {
    wire::Writer w;
    w.put(cpu_us);
    return reply(status, w.data());
}

void limit_process(long long memory) {
#ifdef __linux__
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);  // never outlive the engine's process
#endif
    rlimit none{0, 0};
    ::setrlimit(RLIMIT_CORE, &none);
#if !defined(__SANITIZE_ADDRESS__)  // ASan's shadow memory needs terabytes of address space
    if (memory > 0) {
        rlimit cap{static_cast<rlim_t>(memory), static_cast<rlim_t>(memory)};
        ::setrlimit(RLIMIT_AS, &cap);
    }
#else
    (void) memory;
#endif
}

class Host {
public:
    Host(const llama_vocab * vocab, int32_t n_vocab, long long memory)
        : vocab_(vocab), n_vocab_(n_vocab), memory_mib_(memory >> 20), cand_(static_cast<size_t>(n_vocab)) {}

    bool serve(wire::Op op, uint32_t id, const std::string & payload) {
        try {
            switch (op) {
                case wire::Op::open: return open(id, payload);
                case wire::Op::apply: return apply(id);
                case wire::Op::accept: return accept(id, payload);
                case wire::Op::close: grammars_.erase(id); return reply(wire::Status::ok, "");
            }
            return reply(wire::Status::error, "unknown request");
        } catch (const std::bad_alloc &) {
            grammars_.erase(id);  // its state may be half-updated
            return reply(wire::Status::error, "the grammar needs more memory than its cap of " +
                                                  std::to_string(memory_mib_) + " MiB");
        }
    }

private:
    bool open(uint32_t id, const std::string & payload) {
        wire::Reader r(payload);
        GrammarSpec spec;
        uint32_t n = 0;
        if (!r.get(n)) {
            return reply(wire::Status::error, "malformed open request");
        }
        spec.triggers.resize(n);
        for (std::string & word : spec.triggers) {
            if (!r.text(word)) {
                return reply(wire::Status::error, "malformed open request");
            }
        }
        spec.text = r.rest();
        const int64_t t0 = thread_cpu_us();
        std::string error;
        SamplerPtr grammar = build_grammar(spec, vocab_, error);
        if (!grammar) {
            return reply(wire::Status::error, error.empty() ? "the grammar could not be parsed" : error);
        }
        lazy_[id] = spec.lazy();
        grammars_[id] = std::move(grammar);
        return reply_cpu(wire::Status::ok, thread_cpu_us() - t0);
    }

    bool apply(uint32_t id) {
        auto it = grammars_.find(id);
        if (it == grammars_.end()) {
            return reply(wire::Status::error, "no such grammar");
        }
        for (llama_token t = 0; t < n_vocab_; ++t) {
            cand_[static_cast<size_t>(t)] = llama_token_data{t, 0.0f, 0.0f};
        }
        llama_token_data_array arr{cand_.data(), cand_.size(), -1, false};
        const int64_t t0 = thread_cpu_us();
        llama_sampler_apply(it->second.get(), &arr);
        const int64_t took = thread_cpu_us() - t0;
        std::string mask((static_cast<size_t>(n_vocab_) + 7) / 8, '\0');
        for (size_t i = 0; i < arr.size; ++i) {
            const llama_token t = arr.data[i].id;
            if (arr.data[i].logit > -INFINITY && t >= 0 && t < n_vocab_) {
                mask[static_cast<size_t>(t) / 8] = static_cast<char>(mask[static_cast<size_t>(t) / 8] | (1 << (t % 8)));
            }
        }
        wire::Writer w;
        w.put(took).bytes(mask);
        return reply(wire::Status::ok, w.data());
    }

    // llama.cpp throws when a lazy grammar's trigger replays text the grammar does
    // not admit: the call goes on unconstrained ("dropped"); any other throw ends it.
    bool accept(uint32_t id, const std::string & payload) {
        auto it = grammars_.find(id);
        wire::Reader r(payload);
        llama_token token = 0;
        if (it == grammars_.end() || !r.get(token)) {
            return reply(wire::Status::error, "no such grammar");
        }
        const int64_t t0 = thread_cpu_us();
        try {
            llama_sampler_accept(it->second.get(), token);
        } catch (const std::bad_alloc &) {
            throw;
        } catch (const std::exception & e) {
            const bool lazy = lazy_[id];
            grammars_.erase(it);
            if (lazy) {
                return reply_cpu(wire::Status::dropped, thread_cpu_us() - t0);
            }
            return reply(wire::Status::error, std::string("the grammar could not accept a token it allowed: ") + e.what());
        }
        return reply_cpu(wire::Status::ok, thread_cpu_us() - t0);
    }

    const llama_vocab * vocab_;
    int32_t n_vocab_;
    long long memory_mib_;
    std::vector<llama_token_data> cand_;
    std::unordered_map<uint32_t, SamplerPtr> grammars_;
    std::unordered_map<uint32_t, bool> lazy_;
};

void quiet(ggml_log_level, const char *, void *) {}

struct ModelDeleter {
    void operator()(llama_model * m) const { llama_model_free(m); }
};

int run(const char * path, long long memory) {
    llama_log_set(quiet, nullptr);
    llama_backend_init();
    llama_model_params params = llama_model_default_params();
    params.vocab_only = true;
    std::unique_ptr<llama_model, ModelDeleter> model(llama_model_load_from_file(path, params));
    if (!model) {
        reply(wire::Status::error, std::string("could not load the vocabulary of ") + path);
        return 1;
    }
    const llama_vocab * vocab = llama_model_get_vocab(model.get());
    const int32_t n_vocab = llama_vocab_n_tokens(vocab);
    wire::Writer ready;
    ready.put(n_vocab);
    if (!reply(wire::Status::ok, ready.data())) {
        return 1;
    }
    Host host(vocab, n_vocab, memory);
    char head[wire::kRequestHeader];
    while (move_all(0, head, sizeof head, false)) {
        uint8_t op = 0;
        uint32_t id = 0, n = 0;
        std::memcpy(&op, head, 1);
        std::memcpy(&id, head + 1, 4);
        std::memcpy(&n, head + 5, 4);
        std::string payload(n <= wire::kMaxPayload ? n : 0, '\0');
        if (n > wire::kMaxPayload || !move_all(0, payload.data(), n, false) ||
            !host.serve(static_cast<wire::Op>(op), id, payload)) {
            return 1;
        }
    }
    return 0;
}

}  // namespace
}  // namespace mtpstream

int main(int argc, char ** argv) {
    if (argc != 3) {
        return 2;
    }
    const long long memory = std::atoll(argv[2]);
    mtpstream::limit_process(memory);
    ::setenv("GGML_NO_BACKTRACE", "1", 1);  // an abort must not start gdb on the reply channel
    return mtpstream::run(argv[1], memory);
}

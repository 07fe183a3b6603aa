// The grammar host: a child process (grammar_host_main.cpp) that holds the grammars
// of an engine's calls and runs their steps, so that a grammar whose cost explodes
// costs a killed child, never the worker thread or the process. llama.cpp's grammar
// code cannot be interrupted and, out of memory, throws through its C API; in a
// child, a step that outlasts its deadline is ended by SIGKILL, and a cap on the
// child's address space turns a memory explosion into an error reply.
//
// The engine keeps, per grammar, what it asked (its spec and the tokens accepted so
// far). When the child is killed or dies, the call whose step it was running fails;
// the next step of any other call starts a new child and replays that call's
// grammar into it first (each replayed step under its call's deadline), so the other
// calls go on with exactly the state they had.
//
// Steps run on the engine's worker thread only; release() may come from any thread
// (it is queued and sent with the next step).
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "grammar_build.hpp"
#include "grammar_wire.hpp"

namespace mtpstream {

class GrammarHost {
public:
    // argv: the host's executable, then its arguments (model path, memory cap in bytes).
    explicit GrammarHost(std::vector<std::string> argv) : argv_(std::move(argv)) {}
    ~GrammarHost();
    GrammarHost(const GrammarHost &) = delete;
    GrammarHost & operator=(const GrammarHost &) = delete;

    enum class Outcome { ok, dropped, failed };
    // One step's result: the allowed tokens (apply), the CPU time the host spent on
    // it, and on failure a message naming the cause.
    struct Step {
        Outcome outcome = Outcome::failed;
        int64_t cpu_us = 0;
        std::string error;
    };

    // A new grammar for a call; 0, with `error` set, when it does not parse or the
    // host cannot run. deadline_us: wall-clock limit of each of its steps (<= 0: none).
    uint32_t open(const GrammarSpec & spec, int64_t deadline_us, int32_t n_vocab, Step & step);
    // The tokens the grammar allows now: bit t of `mask` (ceil(n_vocab / 8) bytes).
    Step apply(uint32_t id, std::string & mask);
    // Accept a token into the grammar. dropped: a lazy grammar gave up (the call
    // goes on unconstrained); the grammar is gone either way but ok.
    Step accept(uint32_t id, int32_t token);
    // The call is over: free its grammar (any thread).
    void release(uint32_t id);

private:
    struct Entry {
        GrammarSpec spec;
        int64_t deadline_us;
        std::vector<int32_t> accepted;
    };
    struct Child {
        pid_t pid = -1;
        int fd = -1;
    };

    bool running() const { return child_.fd >= 0; }
    bool start(int32_t n_vocab, std::string & error);
    // Kill the child (if any) and mark every open grammar for replay.
    void stop();
    // Read one reply within deadline_us (<= 0: no limit); on a timeout or a lost
    // child it stops the child and sets `error`.
    bool receive(int64_t deadline_us, wire::Status & status, std::string & reply, std::string & error,
                 bool & timed_out);
    // Send a request and wait for its reply within deadline_us (<= 0: no limit).
    // On a timeout or a lost child it stops the child and sets `error`.
    bool call(wire::Op op, uint32_t id, const std::string & payload, int64_t deadline_us, wire::Status & status,
              std::string & reply, std::string & error, bool & timed_out);
    // One step of grammar `id` (a reply, possibly an error one: true). A child lost
    // on the way (killed from outside, or by this step) is replaced, the grammar
    // replayed and the step tried again (3 children in all); a timeout fails at once.
    bool step_call(wire::Op op, uint32_t id, const std::string & payload, std::string & reply, Step & step);
    bool send_open(uint32_t id, const Entry & e, Step & step, bool & timed_out);
    // Send the queued releases (close requests) to the child.
    void send_releases();
    // Make the child hold every open grammar: start it if needed, replay what a
    // restart lost, send the queued releases. False with `error` when the child
    // could not start.
    bool ready(std::string & error);
    Step finish(wire::Status status, const std::string & reply);
    // Open grammar `id` in a new child again and accept its tokens; false when the
    // child failed meanwhile (the grammar is then marked failed).
    bool replay(uint32_t id);
    // The grammar is open (else `step` names why: failed in a replay, or lost).
    bool known(uint32_t id, Step & step);
    // Why the child's connection ended (reaps it when it has exited).
    std::string describe_exit();

    std::vector<std::string> argv_;
    Child child_;
    int32_t n_vocab_ = 0;
    uint32_t next_id_ = 1;
    std::map<uint32_t, Entry> open_;  // worker thread only
    std::vector<uint32_t> replay_;   // grammars the current child does not hold yet
    std::map<uint32_t, std::string> failed_;  // grammars lost in a replay, with why
    std::mutex released_mutex_;
    std::vector<uint32_t> released_;
};

}  // namespace mtpstream

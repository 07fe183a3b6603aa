#include "grammar_host.hpp"

#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <algorithm>

#include "clock.hpp"

extern char ** environ;

namespace mtpstream {

namespace {

constexpr int64_t kStartDeadlineUs = 60'000'000;    // loading the vocabulary
constexpr int64_t kCloseDeadlineUs = 10'000'000;    // freeing a grammar
// children one step may lose before it fails: a child killed from outside costs a
// retry; a step that kills every child it runs on fails after this many
constexpr int kAttempts = 3;

// Move n bytes over a socket before `deadline_at` (now_us() clock; < 0: none). False
// on a timeout (timed_out set), a closed peer or an error.
bool transfer(int fd, char * p, size_t n, bool sending, int64_t deadline_at, bool & timed_out) {
    timed_out = false;
    while (n > 0) {
        int wait_ms = -1;
        if (deadline_at >= 0) {
            const int64_t left = deadline_at - now_us();
            if (left <= 0) {
                timed_out = true;
                return false;
            }
            wait_ms = static_cast<int>(std::min<int64_t>(left / 1000 + 1, 1000));
        }
        pollfd pfd{fd, static_cast<short>(sending ? POLLOUT : POLLIN), 0};
        const int ready = ::poll(&pfd, 1, wait_ms);
        if (ready < 0 && errno != EINTR) {
            return false;
        }
        if (ready <= 0) {
            continue;
        }
        const ssize_t k = sending ? ::send(fd, p, n, MSG_NOSIGNAL | MSG_DONTWAIT) : ::recv(fd, p, n, MSG_DONTWAIT);
        if (k < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)) {
            continue;
        }
        if (k <= 0) {
            return false;
        }
        p += k;
        n -= static_cast<size_t>(k);
    }
    return true;
}

std::string seconds(int64_t us) {
    char text[32];
    std::snprintf(text, sizeof text, "%.1f s", static_cast<double>(us) / 1e6);
    return text;
}

}  // namespace

GrammarHost::~GrammarHost() { stop(); }

bool GrammarHost::start(int32_t n_vocab, std::string & error) {
    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
        error = std::string("could not start the grammar's process: socketpair: ") + std::strerror(errno);
        return false;
    }
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, sv[1], 0);
    posix_spawn_file_actions_adddup2(&actions, sv[1], 1);
    std::vector<char *> args;
    for (std::string & a : argv_) {
        args.push_back(a.data());
    }
    args.push_back(nullptr);
    pid_t pid = -1;
    const int rc = args.size() > 1 ? ::posix_spawn(&pid, args[0], &actions, nullptr, args.data(), environ) : EINVAL;
    posix_spawn_file_actions_destroy(&actions);
    ::close(sv[1]);
    if (rc != 0) {
        ::close(sv[0]);
        error = "could not start the grammar's process " + (argv_.empty() ? std::string() : argv_[0]) + ": " +
                std::strerror(rc);
        return false;
    }
    child_ = Child{pid, sv[0]};
    wire::Status status = wire::Status::error;
    std::string reply;
    bool timed_out = false;
    if (!receive(kStartDeadlineUs, status, reply, error, timed_out)) {
        return false;
    }
    wire::Reader r(reply);
    int32_t n = 0;
    if (status != wire::Status::ok || !r.get(n) || n != n_vocab) {
        error = status != wire::Status::ok ? "the grammar's process could not start: " + reply
                                           : "the grammar's process loaded a vocabulary of " + std::to_string(n) +
                                                 " tokens, not the model's " + std::to_string(n_vocab);
        stop();
        return false;
    }
    n_vocab_ = n_vocab;
    return true;
}

void GrammarHost::stop() {
    if (!running()) {
        return;
    }
    if (child_.pid > 0) {
        ::kill(child_.pid, SIGKILL);
        int wstatus = 0;
        while (::waitpid(child_.pid, &wstatus, 0) < 0 && errno == EINTR) {
        }
    }
    ::close(child_.fd);
    child_ = Child{};
    replay_.clear();
    for (const auto & entry : open_) {
        replay_.push_back(entry.first);  // the next child must learn them again
    }
}

std::string GrammarHost::describe_exit() {
    int wstatus = 0;
    pid_t got = 0;
    for (int i = 0; i < 100 && got == 0 && child_.pid > 0; ++i) {
        got = ::waitpid(child_.pid, &wstatus, WNOHANG);
        if (got == 0) {
            ::usleep(10'000);  // the socket closes a moment before the process can be reaped
        }
    }
    if (got <= 0 || got != child_.pid) {
        return "it closed its connection";
    }
    child_.pid = -1;  // reaped: stop() must not signal the pid again
    if (WIFSIGNALED(wstatus)) {
        const int sig = WTERMSIG(wstatus);
        return "killed by signal " + std::to_string(sig) + (sig == SIGABRT ? " (aborted)" : "");
    }
    return "exit status " + std::to_string(WIFEXITED(wstatus) ? WEXITSTATUS(wstatus) : -1);
}

bool GrammarHost::receive(int64_t deadline_us, wire::Status & status, std::string & reply, std::string & error,
                          bool & timed_out) {
    const int64_t deadline_at = deadline_us > 0 ? now_us() + deadline_us : -1;
    char head[wire::kReplyHeader];
    uint32_t n = 0;
    bool ok = transfer(child_.fd, head, sizeof head, false, deadline_at, timed_out);
    if (ok) {
        std::memcpy(&status, head, 1);
        std::memcpy(&n, head + 1, 4);
        ok = n <= wire::kMaxPayload;
    }
    if (ok) {
        reply.assign(n, '\0');
        ok = transfer(child_.fd, reply.data(), n, false, deadline_at, timed_out);
    }
    if (!ok) {
        error = timed_out ? "the grammar is too costly: a grammar step did not finish within its deadline of " +
                                seconds(deadline_us) + " (its process was stopped)"
                          : "the grammar's process ended (" + describe_exit() + ")";
        stop();
    }
    return ok;
}

bool GrammarHost::call(wire::Op op, uint32_t id, const std::string & payload, int64_t deadline_us,
                       wire::Status & status, std::string & reply, std::string & error, bool & timed_out) {
    wire::Writer w;
    w.put(static_cast<uint8_t>(op)).put(id).put(static_cast<uint32_t>(payload.size())).bytes(payload);
    std::string request = w.data();
    const int64_t deadline_at = deadline_us > 0 ? now_us() + deadline_us : -1;
    if (!transfer(child_.fd, request.data(), request.size(), true, deadline_at, timed_out)) {
        error = "the grammar's process ended (" + describe_exit() + ")";
        stop();
        return false;
    }
    return receive(deadline_us, status, reply, error, timed_out);
}

bool GrammarHost::send_open(uint32_t id, const Entry & e, Step & step, bool & timed_out) {
    wire::Writer w;
    w.put(static_cast<uint32_t>(e.spec.triggers.size()));
    for (const std::string & word : e.spec.triggers) {
        w.text(word);
    }
    w.bytes(e.spec.text);
    wire::Status status = wire::Status::error;
    std::string reply;
    if (!call(wire::Op::open, id, w.data(), e.deadline_us, status, reply, step.error, timed_out)) {
        return false;
    }
    step = finish(status, reply);
    return step.outcome == Outcome::ok;
}

GrammarHost::Step GrammarHost::finish(wire::Status status, const std::string & reply) {
    Step step;
    if (status == wire::Status::error) {
        step.error = reply;
        return step;
    }
    wire::Reader r(reply);
    if (!r.get(step.cpu_us)) {
        step.error = "the grammar's process sent a malformed reply";
        return step;
    }
    step.outcome = status == wire::Status::dropped ? Outcome::dropped : Outcome::ok;
    return step;
}

bool GrammarHost::replay(uint32_t id) {
    auto it = open_.find(id);
    if (it == open_.end()) {
        return true;
    }
    Step step;
    bool timed_out = false;
    bool ok = send_open(id, it->second, step, timed_out);
    for (size_t i = 0; ok && i < it->second.accepted.size(); ++i) {
        wire::Writer w;
        w.put(it->second.accepted[i]);
        wire::Status status = wire::Status::error;
        std::string reply;
        ok = call(wire::Op::accept, id, w.data(), it->second.deadline_us, status, reply, step.error, timed_out) &&
             finish(status, reply).outcome == Outcome::ok;
    }
    // a child lost on the way (killed from outside) keeps the grammar queued for the
    // next one; a refusal or a timeout fails it
    if (!ok && (running() || timed_out)) {
        failed_[id] = "the grammar could not be restored after its process was restarted: " + step.error;
        open_.erase(id);
    }
    return running();
}

void GrammarHost::send_releases() {
    std::vector<uint32_t> released;
    {
        std::lock_guard<std::mutex> lock(released_mutex_);
        released.swap(released_);
    }
    for (uint32_t id : released) {
        failed_.erase(id);
        const bool held = std::find(replay_.begin(), replay_.end(), id) == replay_.end();
        if (open_.erase(id) > 0 && running() && held) {
            wire::Status status = wire::Status::error;
            std::string reply, error;  // a failed close stops the child: the next step starts another
            bool timed_out = false;
            call(wire::Op::close, id, "", kCloseDeadlineUs, status, reply, error, timed_out);
        }
    }
}

bool GrammarHost::ready(std::string & error) {
    send_releases();
    for (int attempt = 0; attempt < kAttempts; ++attempt) {
        if (!running() && !start(n_vocab_, error)) {
            return false;
        }
        std::vector<uint32_t> todo;
        todo.swap(replay_);
        bool alive = true;
        for (uint32_t id : todo) {
            alive = alive && replay(id);
        }
        if (alive && running()) {
            return true;
        }
    }
    error = "the grammar's process keeps failing while its grammars are restored";
    return false;
}

uint32_t GrammarHost::open(const GrammarSpec & spec, int64_t deadline_us, int32_t n_vocab, Step & step) {
    if (n_vocab_ == 0) {
        n_vocab_ = n_vocab;
    }
    const uint32_t id = next_id_++;
    Entry entry{spec, deadline_us, {}};
    for (int attempt = 0; attempt < kAttempts; ++attempt) {  // again when the child was lost meanwhile
        if (!ready(step.error)) {
            return 0;
        }
        bool timed_out = false;
        if (send_open(id, entry, step, timed_out)) {
            open_.emplace(id, std::move(entry));
            return id;
        }
        if (running() || timed_out) {
            return 0;  // an answer (the grammar does not parse), or too slow to build
        }
    }
    return 0;
}

bool GrammarHost::step_call(wire::Op op, uint32_t id, const std::string & payload, std::string & reply, Step & step) {
    for (int attempt = 0; attempt < kAttempts; ++attempt) {
        if (!ready(step.error) || !known(id, step)) {
            return false;
        }
        wire::Status status = wire::Status::error;
        bool timed_out = false;
        if (call(op, id, payload, open_[id].deadline_us, status, reply, step.error, timed_out)) {
            step = finish(status, reply);
            if (step.outcome != Outcome::ok) {
                open_.erase(id);  // an error or a lazy grammar's end: the host no longer holds it
            }
            return true;
        }
        if (timed_out) {
            break;  // it would not finish in a new child either
        }
        // the child was lost (killed from outside, or by this very step): the grammar
        // is replayed into a new one and the step tried once more
    }
    open_.erase(id);
    step.outcome = Outcome::failed;
    return false;
}

GrammarHost::Step GrammarHost::apply(uint32_t id, std::string & mask) {
    Step step;
    std::string reply;
    if (!step_call(wire::Op::apply, id, "", reply, step) || step.outcome != Outcome::ok) {
        return step;
    }
    const size_t want = (static_cast<size_t>(n_vocab_) + 7) / 8;
    if (reply.size() != sizeof(int64_t) + want) {
        open_.erase(id);
        return Step{Outcome::failed, 0, "the grammar's process sent a malformed reply"};
    }
    mask.assign(reply, sizeof(int64_t), want);
    return step;
}

GrammarHost::Step GrammarHost::accept(uint32_t id, int32_t token) {
    Step step;
    std::string reply;
    wire::Writer w;
    w.put(token);
    if (step_call(wire::Op::accept, id, w.data(), reply, step) && step.outcome == Outcome::ok) {
        open_[id].accepted.push_back(token);
    }
    return step;
}

bool GrammarHost::known(uint32_t id, Step & step) {
    auto failed = failed_.find(id);
    if (failed != failed_.end()) {
        step.error = failed->second;
        failed_.erase(failed);
        return false;
    }
    if (open_.count(id) == 0) {
        step.error = "the grammar's process lost this call's grammar";
        return false;
    }
    return true;
}

void GrammarHost::release(uint32_t id) {
    if (id == 0) {
        return;
    }
    std::lock_guard<std::mutex> lock(released_mutex_);
    released_.push_back(id);
}

}  // namespace mtpstream

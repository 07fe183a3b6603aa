#include "rpc.hpp"

#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <mutex>

#include "ggml-rpc.h"

// exported by ggml-base (ggml.c), declared in its internal header only
extern "C" void ggml_print_backtrace(void);

namespace mtpstream {

namespace {

using add_server_fn = decltype(&ggml_backend_rpc_add_server);
using start_server_fn = decltype(&ggml_backend_rpc_start_server);

const char * const kNoRpc =
    "this llama.cpp build has no RPC backend: reinstall llama-cpp-python with CMAKE_ARGS=\"-DGGML_RPC=on\" "
    "(bash scripts/dev.sh setup does)";

// ggml's RPC entry point `name`, or nullptr (status filled) when the build lacks it.
void * rpc_proc(const char * name, Status & status) {
    ggml_backend_reg_t reg = ggml_backend_reg_by_name("RPC");
    void * fn = reg != nullptr ? ggml_backend_reg_get_proc_address(reg, name) : nullptr;
    if (fn == nullptr) {
        status = Status::error(ErrorCode::model_load, kNoRpc);
    }
    return fn;
}

// The local accelerators of llama.cpp's default device choice (its CPU is implicit).
void append_local_accelerators(std::vector<ggml_backend_dev_t> & out) {
    std::vector<ggml_backend_dev_t> gpus;
    std::vector<ggml_backend_dev_t> igpus;
    for (size_t i = 0; i < ggml_backend_dev_count(); ++i) {
        ggml_backend_dev_t dev = ggml_backend_dev_get(i);
        if (std::strcmp(ggml_backend_reg_name(ggml_backend_dev_backend_reg(dev)), "RPC") == 0) {
            continue;
        }
        const enum ggml_backend_dev_type type = ggml_backend_dev_type(dev);
        if (type == GGML_BACKEND_DEVICE_TYPE_GPU) {
            gpus.push_back(dev);
        } else if (type == GGML_BACKEND_DEVICE_TYPE_IGPU) {
            igpus.push_back(dev);
        }
    }
    const std::vector<ggml_backend_dev_t> & local = gpus.empty() ? igpus : gpus;
    out.insert(out.end(), local.begin(), local.end());
}

// Process-wide by nature: ggml's abort callback is one per process.
struct AbortHook {
    std::mutex mutex;
    std::vector<std::string> endpoints;
    ggml_abort_callback_t previous = nullptr;
    bool installed = false;
};

AbortHook & abort_hook() {
    static AbortHook * hook = new AbortHook();  // never destroyed: an abort may come at exit
    return *hook;
}

// Whether a TCP connection to `endpoint` is refused (nothing listens there any more),
// as opposed to accepted or unanswered within a second (a worker serving its one
// client keeps a backlog of one: a further connection may go unanswered).
bool refused(const std::string & endpoint) {
    const size_t colon = endpoint.rfind(':');
    if (colon == std::string::npos) {
        return false;
    }
    const std::string host = endpoint.substr(0, colon);
    const std::string port = endpoint.substr(colon + 1);
    addrinfo hints{};
    hints.ai_socktype = SOCK_STREAM;
    addrinfo * found = nullptr;
    if (getaddrinfo(host.c_str(), port.c_str(), &hints, &found) != 0 || found == nullptr) {
        return false;
    }
    bool out = false;
    const int fd = socket(found->ai_family, found->ai_socktype, found->ai_protocol);
    if (fd >= 0) {
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL, 0) | O_NONBLOCK);
        if (connect(fd, found->ai_addr, found->ai_addrlen) != 0) {
            if (errno == ECONNREFUSED) {
                out = true;
            } else {
                pollfd p{fd, POLLOUT, 0};
                int err = 0;
                socklen_t len = sizeof(err);
                out = poll(&p, 1, 1000) == 1 && getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 &&
                      err == ECONNREFUSED;
            }
        }
        close(fd);
    }
    freeaddrinfo(found);
    return out;
}

void on_abort(const char * message) {
    std::fprintf(stderr, "%s\n", message);
    AbortHook & hook = abort_hook();
    if (std::strstr(message, "Remote RPC server crashed") != nullptr) {
        std::vector<std::string> endpoints;
        if (hook.mutex.try_lock()) {
            endpoints = hook.endpoints;
            hook.mutex.unlock();
        }
        // a worker that is going away may still hold its listening socket for a moment
        // after our connection to it broke: it counts as lost if any of five tries, 100 ms
        // apart, is refused
        std::vector<bool> gone(endpoints.size(), false);
        for (int attempt = 0; attempt < 5; ++attempt) {
            for (size_t i = 0; i < endpoints.size(); ++i) {
                gone[i] = gone[i] || refused(endpoints[i]);
            }
            usleep(100 * 1000);
        }
        std::string lost;
        for (size_t i = 0; i < endpoints.size(); ++i) {
            if (gone[i]) {
                lost += (lost.empty() ? "" : ", ") + endpoints[i];
            }
        }
        std::fprintf(stderr,
                     "mtpstream: lost the RPC worker %s; llama.cpp's RPC client cannot recover from a lost worker "
                     "and ends the process (README, \"Over several machines\")\n",
                     lost.empty() ? "(none of them refuses connections: unreachable?)" : lost.c_str());
        std::fflush(stderr);
    }
    if (hook.previous != nullptr) {
        hook.previous(message);
    } else {
        ggml_print_backtrace();
    }
}

}  // namespace

void note_rpc_endpoints(const std::vector<std::string> & endpoints) {
    AbortHook & hook = abort_hook();
    std::lock_guard<std::mutex> lock(hook.mutex);
    for (const std::string & e : endpoints) {
        if (std::find(hook.endpoints.begin(), hook.endpoints.end(), e) == hook.endpoints.end()) {
            hook.endpoints.push_back(e);
        }
    }
    if (!hook.installed) {
        hook.previous = ggml_set_abort_callback(&on_abort);
        hook.installed = true;
    }
}

bool rpc_available() { return ggml_backend_reg_by_name("RPC") != nullptr; }

int rpc_protocol_major() { return RPC_PROTO_MAJOR_VERSION; }

std::vector<ggml_backend_dev_t> rpc_devices(const std::vector<std::string> & endpoints, Status & status) {
    auto add = reinterpret_cast<add_server_fn>(rpc_proc("ggml_backend_rpc_add_server", status));
    if (add == nullptr) {
        return {};
    }
    note_rpc_endpoints(endpoints);
    std::vector<ggml_backend_dev_t> out;
    for (const std::string & endpoint : endpoints) {
        ggml_backend_reg_t reg = add(endpoint.c_str());
        const size_t n = reg != nullptr ? ggml_backend_reg_dev_count(reg) : 0;
        if (n == 0) {
            status = Status::error(ErrorCode::model_load, "the RPC server at " + endpoint + " offers no device");
            return {};
        }
        for (size_t i = 0; i < n; ++i) {
            out.push_back(ggml_backend_reg_dev_get(reg, i));
        }
    }
    append_local_accelerators(out);
    return out;
}

void rpc_serve(const std::string & endpoint, const std::string & cache_dir, int n_threads, Status & status) {
    auto start = reinterpret_cast<start_server_fn>(rpc_proc("ggml_backend_rpc_start_server", status));
    if (start == nullptr) {
        return;
    }
    ggml_backend_dev_t cpu = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU);
    if (cpu == nullptr) {
        status = Status::error(ErrorCode::invalid_argument, "this llama.cpp build has no CPU device");
        return;
    }
    const size_t threads = n_threads > 0 ? static_cast<size_t>(n_threads) : 1;
    start(endpoint.c_str(), cache_dir.empty() ? nullptr : cache_dir.c_str(), threads, 1, &cpu);
    status = Status::error(ErrorCode::invalid_argument,
                           "the RPC server at " + endpoint + " stopped: it could not bind or accept (port in use?)");
}

}  // namespace mtpstream

#include "rpc.hpp"
#include "rpc_worker_cap.hpp"

#include <cstdlib>
#include <cstring>

#include "ggml-rpc.h"

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

}  // namespace

bool rpc_available() { return ggml_backend_reg_by_name("RPC") != nullptr; }

int rpc_protocol_major() { return RPC_PROTO_MAJOR_VERSION; }

std::vector<ggml_backend_dev_t> rpc_devices(const std::vector<std::string> & endpoints, int reply_timeout_ms,
                                            std::vector<WorkerWatch> & watches,
                                            std::vector<std::shared_ptr<RpcRelay>> & relays, Status & status) {
    auto add = reinterpret_cast<add_server_fn>(rpc_proc("ggml_backend_rpc_add_server", status));
    if (add == nullptr) {
        return {};
    }
    const char * choice = std::getenv("MTPSTREAM_RPC_GUARD");
    const std::string guard = choice != nullptr ? choice : "hooks";
    std::string why_not;
    const bool hooked = guard == "hooks" && install_socket_hooks(why_not);
    const bool relayed = !hooked && guard != "off";
    std::vector<ggml_backend_dev_t> out;
    watches.clear();
    relays.clear();
    for (const std::string & endpoint : endpoints) {
        std::shared_ptr<RpcRelay> relay = relayed ? RpcRelay::for_worker(endpoint, reply_timeout_ms, status) : nullptr;
        if (relayed && relay == nullptr) {
            return {};
        }
        if (relay != nullptr) {
            relays.push_back(relay);
        } else if (hooked) {
            set_hooked_reply_timeout(endpoint, reply_timeout_ms);
        }
        watches.push_back({endpoint, relay != nullptr ? relay->link() : nullptr});
        ggml_backend_reg_t reg = add(relay != nullptr ? relay->endpoint().c_str() : endpoint.c_str());
        const size_t n = reg != nullptr ? ggml_backend_reg_dev_count(reg) : 0;
        if (n == 0) {
            attach_links(watches);
            const std::string lost = describe_losses(watches);
            status = Status::error(ErrorCode::model_load,
                                   !lost.empty() ? lost : "the RPC server at " + endpoint + " offers no device");
            return {};
        }
        for (size_t i = 0; i < n; ++i) {
            out.push_back(ggml_backend_reg_dev_get(reg, i));
        }
    }
    append_local_accelerators(out);
    return out;
}

void attach_links(std::vector<WorkerWatch> & watches) {
    for (WorkerWatch & w : watches) {
        if (w.link == nullptr) {
            w.link = hooked_link(w.worker);
        }
    }
}

void rpc_serve(const std::string & endpoint, const std::string & cache_dir, int n_threads, uint64_t mem_bytes,
               Status & status) {
    auto start = reinterpret_cast<start_server_fn>(rpc_proc("ggml_backend_rpc_start_server", status));
    if (start == nullptr) {
        return;
    }
    std::string why_not;
    if (mem_bytes > 0 && !install_socket_hooks(why_not)) {
        status = Status::error(ErrorCode::invalid_argument, "--mem needs mtpstream's socket hooks: " + why_not, "mem");
        return;
    }
    set_worker_mem_cap(mem_bytes);
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

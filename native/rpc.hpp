// llama.cpp's RPC backend, reached through ggml's backend registry (so a build
// without it is an error value, not a link failure): the client devices a model
// offloads layers to, and the worker loop of `mtpstream rpc-server`.
#pragma once

#include <string>
#include <vector>

#include "ggml-backend.h"
#include "status.hpp"

namespace mtpstream {

// Whether this llama.cpp build has the RPC backend (-DGGML_RPC=on).
bool rpc_available();

// The protocol major version this build speaks (ggml-rpc.h).
int rpc_protocol_major();

// The devices of the RPC servers at `endpoints` ("host:port"), in order, followed by
// the local accelerators llama.cpp would pick by default (GPUs, else integrated GPUs);
// the host CPU is never in the list (llama.cpp keeps the layers not offloaded there).
// ggml's client aborts the process when it cannot connect, so the caller checks that
// every endpoint answers first. On failure: empty, `status` filled.
std::vector<ggml_backend_dev_t> rpc_devices(const std::vector<std::string> & endpoints, Status & status);

// Remembers that this process's models use the RPC servers at `endpoints`, and installs
// (once) ggml's abort hook: ggml's RPC client aborts the process when it loses a
// worker mid-run, and the hook then says which of these endpoints no longer accepts
// connections before the process ends (other aborts behave as before).
void note_rpc_endpoints(const std::vector<std::string> & endpoints);

// Serves the CPU device to RPC clients at `endpoint` ("host:port"), one client at a
// time; blocks for as long as the server runs and returns only when it could not
// start or accept (`status` filled).
void rpc_serve(const std::string & endpoint, const std::string & cache_dir, int n_threads, Status & status);

}  // namespace mtpstream

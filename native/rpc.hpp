// llama.cpp's RPC backend, reached through ggml's backend registry (so a build
// without it is an error value, not a link failure): the client devices a model
// offloads layers to, and the worker loop of `mtpstream rpc-server`.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "ggml-backend.h"
#include "rpc_relay.hpp"
#include "status.hpp"

namespace mtpstream {

// Whether this llama.cpp build has the RPC backend (-DGGML_RPC=on).
bool rpc_available();

// The protocol major version this build speaks (ggml-rpc.h).
int rpc_protocol_major();

// The devices of the RPC servers at `endpoints` ("host:port"), in order, followed by
// the local accelerators llama.cpp would pick by default (GPUs, else integrated GPUs);
// the host CPU is never in the list (llama.cpp keeps the layers not offloaded there).
// ggml's client reaches the servers guarded (rpc_guard.hpp): `watches` gets one entry
// per endpoint (its link is set now with the relay, by attach_links after the load
// with the socket hooks) and `relays` the relays in use. MTPSTREAM_RPC_GUARD chooses
// the means: "hooks" (the default; the relay where they cannot be installed), "relay",
// or "off" (ggml's client on its own: a lost worker ends the process; for measuring
// the guard). A reply that takes longer than `reply_timeout_ms` counts its worker as
// lost (a connection opened for an earlier model keeps that model's value). ggml's client aborts the process when it cannot connect, so the caller
// checks that every endpoint answers first. On failure: empty, `status` filled.
std::vector<ggml_backend_dev_t> rpc_devices(const std::vector<std::string> & endpoints, int reply_timeout_ms,
                                            std::vector<WorkerWatch> & watches,
                                            std::vector<std::shared_ptr<RpcRelay>> & relays, Status & status);

// With the socket hooks: the connection each watch's worker has now (after a load).
void attach_links(std::vector<WorkerWatch> & watches);

// Serves the CPU device to RPC clients at `endpoint` ("host:port"), one client at a
// time; blocks for as long as the server runs and returns only when it could not
// start or accept (`status` filled). `mem_bytes` > 0: the memory it offers each client
// (rpc_worker_cap.hpp).
void rpc_serve(const std::string & endpoint, const std::string & cache_dir, int n_threads, uint64_t mem_bytes,
               Status & status);

}  // namespace mtpstream

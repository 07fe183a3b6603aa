// A loaded GGUF model: RAII owner of one llama_model, plus the vocabulary helpers.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "llama.h"
#include "rpc_relay.hpp"
#include "status.hpp"

namespace mtpstream {

struct ModelLoadOptions {
    std::optional<int> n_gpu_layers;  // nullopt: llama.cpp's default
    bool load_mtp = true;
    bool use_mmap = true;
    // llama.cpp's extra weight buffers (repacked CPU layouts, AMX); nullopt: on unless
    // the CPU backend offers the AMX buffer (see cpu_offers_amx_buffer)
    std::optional<bool> repack;
    // MoE expert weights kept in CPU memory (buffer-type overrides): those of the first
    // n_cpu_moe blocks; -1: of every block; 0: none
    int32_t n_cpu_moe = 0;
    // Called with 0..1 while loading; return false to abort the load.
    std::function<bool(float)> progress;
    // RPC servers ("host:port") whose devices take offloaded layers, in this order
    // (then the local accelerators); empty: llama.cpp's default devices
    std::vector<std::string> rpc;
    // the share of the offloaded layers per device (llama_model_params.tensor_split);
    // empty: llama.cpp's default (by free memory)
    std::vector<float> tensor_split;
    // how long an RPC worker's reply may take before the worker counts as lost
    int rpc_timeout_ms = WorkerLink::kReplyTimeoutMs;
    // with RPC workers and no local accelerator: the offloaded layers from this index on
    // (the MTP blocks, then the output layer) go to this host's CPU, not the last
    // worker (tail_split); -1: llama.cpp's placement. n_layer_all: the GGUF's block count.
    int32_t host_tail_from = -1;
    int32_t n_layer_all = 0;
};

// Whether this llama.cpp build and this CPU give the CPU backend ggml's AMX weight
// buffer. Its matrix multiply (ggml 0.25.3, ggml-cpu/amx/mmq.cpp) indexes a batched
// activation with byte offsets as element offsets and does not broadcast a 2D
// weight over the batch: Qwen3.5's ssm_out projection of a ubatch holding two or
// more sequences reads and writes out of bounds there (wrong tokens, SIGSEGV).
bool cpu_offers_amx_buffer();

class Model {
public:
    // Loads `path`; on failure returns nullptr and fills `status`.
    static std::shared_ptr<Model> load(const std::string & path, const ModelLoadOptions & opts,
                                       Status & status);
    ~Model();
    Model(const Model &) = delete;
    Model & operator=(const Model &) = delete;

    llama_model * get() const { return model_; }
    const llama_vocab * vocab() const { return vocab_; }
    const std::string & path() const { return path_; }
    bool load_mtp() const { return load_mtp_; }
    bool repack() const { return repack_; }
    // whether the layers from ModelLoadOptions::host_tail_from on went to this host's CPU
    bool host_tail() const { return host_tail_; }
    // "lost the RPC worker host:port (why)" once a worker holding part of the model is
    // lost (its weights with it: the model is unusable); "" while none is.
    std::string rpc_loss() const { return watches_.empty() ? std::string() : describe_losses(watches_); }
    bool rpc_lost() const { return !watches_.empty() && any_lost(watches_); }
    // The loopback endpoint of each RPC worker's relay (what llama.cpp's log names).
    std::vector<std::string> rpc_relay_endpoints() const;

    int32_t n_vocab() const { return llama_vocab_n_tokens(vocab_); }
    int32_t n_embd() const { return llama_model_n_embd(model_); }
    int32_t n_embd_out() const { return llama_model_n_embd_out(model_); }
    int32_t n_layer() const { return llama_model_n_layer(model_); }
    int32_t n_layer_nextn() const { return llama_model_n_layer_nextn(model_); }
    int32_t n_ctx_train() const { return llama_model_n_ctx_train(model_); }
    uint64_t size_bytes() const { return llama_model_size(model_); }
    uint64_t n_params() const { return llama_model_n_params(model_); }
    std::string description() const;
    std::string chat_template() const;
    // The vocabulary's text of a token, special tokens included ("<|im_end|>").
    std::string token_text(llama_token id) const;
    std::vector<std::pair<std::string, std::string>> metadata() const;

    llama_token bos() const { return llama_vocab_bos(vocab_); }
    llama_token eos() const { return llama_vocab_eos(vocab_); }
    bool is_eog(llama_token t) const { return llama_vocab_is_eog(vocab_, t); }
    bool valid_token(llama_token t) const { return t >= 0 && t < n_vocab(); }

    std::vector<llama_token> tokenize(const std::string & text, bool add_special,
                                      bool parse_special) const;
    std::string detokenize(const std::vector<llama_token> & ids) const;
    // Bytes of one token as generation renders it (control tokens render empty;
    // with `special`, as their text).
    std::string token_to_piece(llama_token id, bool special = false) const;

private:
    Model(llama_model * model, std::string path, bool load_mtp, bool repack, bool host_tail,
          std::vector<WorkerWatch> watches, std::vector<std::shared_ptr<RpcRelay>> relays);

    llama_model * model_;
    const llama_vocab * vocab_;
    std::string path_;
    bool load_mtp_;
    bool repack_;
    bool host_tail_;
    std::vector<WorkerWatch> watches_;
    std::vector<std::shared_ptr<RpcRelay>> relays_;
};

}  // namespace mtpstream

#include "model.hpp"

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstring>
#include <numeric>
#include <string>
#include <vector>

#include "ggml-backend.h"
#include "rpc.hpp"

namespace mtpstream {

namespace {

bool progress_trampoline(float progress, void * user_data) {
    auto * fn = static_cast<const std::function<bool(float)> *>(user_data);
    return (*fn)(progress);
}

// The expert tensors of an MoE block (ffn_{gate,up,down,gate_up}_exps and their
// "chexps" variants), as a regex on tensor names after the block prefix.
const char * const kExpertTensors = "\\.ffn_(?:gate_up|gate|up|down)_(?:ch)?exps\\b";

// The buffer-type overrides that keep the MoE experts of the first n blocks (all of
// them for n < 0) in CPU memory; `patterns` owns the strings the overrides point to.
std::vector<llama_model_tensor_buft_override> expert_overrides(int32_t n, std::vector<std::string> & patterns) {
    patterns.clear();
    if (n < 0) {
        patterns.emplace_back(std::string("^blk\\.[0-9]+") + kExpertTensors);
    }
    for (int32_t i = 0; i < n; ++i) {
        patterns.push_back("^blk\\." + std::to_string(i) + kExpertTensors);
    }
    std::vector<llama_model_tensor_buft_override> out;
    for (const std::string & p : patterns) {
        out.push_back({p.c_str(), ggml_backend_cpu_buffer_type()});
    }
    out.push_back({nullptr, nullptr});  // the list ends with a null pattern
    return out;
}

// Whether `devices` ends with one of this host's accelerators (which llama.cpp gives
// the last layers anyway).
bool ends_local(const std::vector<ggml_backend_dev_t> & devices) {
    return !devices.empty() &&
           std::strcmp(ggml_backend_reg_name(ggml_backend_dev_backend_reg(devices.back())), "RPC") != 0;
}

// Each device's share of the offloaded layers: the user's tensor_split, or (none
// given, or all zero) its free memory as llama.cpp does.
std::vector<double> device_weights(const std::vector<float> & given, const std::vector<ggml_backend_dev_t> & devices) {
    std::vector<double> weights(devices.size(), 0.0);
    const bool use_given = std::any_of(given.begin(), given.end(), [](float x) { return x > 0.0f; });
    for (size_t i = 0; i < devices.size(); ++i) {
        if (use_given) {
            weights[i] = i < given.size() ? given[i] : 0.0;
            continue;
        }
        size_t free = 0;
        size_t total = 0;
        ggml_backend_dev_memory(devices[i], &free, &total);
        weights[i] = static_cast<double>(free);
    }
    return weights;
}

// A split for `devices` plus this host's CPU (appended by the caller) that sends every
// offloaded layer from opts.host_tail_from on to the CPU. llama.cpp gives layer il of
// the offloaded range [start, n_layer_all] (the output layer last) to the first device
// whose cumulative share exceeds (il - start) / offloaded; the other devices' shares
// are whole layers (rounded running totals of their weights), so the float split
// point falls exactly where the tail starts.
std::vector<float> tail_split(const ModelLoadOptions & opts, const std::vector<ggml_backend_dev_t> & devices) {
    const int32_t all = opts.n_layer_all + 1;
    const int32_t ngl = opts.n_gpu_layers.value_or(-1);
    const int32_t offloaded = ngl < 0 ? all : std::min(ngl, all);
    const int32_t head = std::clamp(opts.host_tail_from - (all - offloaded), 0, offloaded);
    const std::vector<double> weights = device_weights(opts.tensor_split, devices);
    const double sum = std::accumulate(weights.begin(), weights.end(), 0.0);
    std::vector<float> split(llama_max_devices(), 0.0f);
    double running = 0.0;
    int32_t placed = 0;
    for (size_t i = 0; i < devices.size(); ++i) {
        running += weights[i];
        const auto upto = i + 1 == devices.size() || sum <= 0.0 ? head
                                                                : static_cast<int32_t>(std::lround(head * running / sum));
        split[i] = static_cast<float>(upto - placed);
        placed = upto;
    }
    split[devices.size()] = static_cast<float>(offloaded - head);
    return split;
}

// The offload devices (the RPC servers' first) and the tensor split into `params`;
// `devices` and `split` own what `params` points to.
bool place_layers(const ModelLoadOptions & opts, llama_model_params & params, std::vector<ggml_backend_dev_t> & devices,
                  std::vector<float> & split, std::vector<WorkerWatch> & watches,
                  std::vector<std::shared_ptr<RpcRelay>> & relays, Status & status) {
    const size_t max = llama_max_devices();
    if (opts.tensor_split.size() > max) {
        status = Status::error(ErrorCode::invalid_argument,
                               "tensor_split has " + std::to_string(opts.tensor_split.size()) +
                                   " entries; this llama.cpp build takes at most " + std::to_string(max),
                               "tensor_split");
        return false;
    }
    if (!opts.rpc.empty()) {
        devices = rpc_devices(opts.rpc, opts.rpc_timeout_ms, watches, relays, status);
        if (devices.empty()) {
            return false;
        }
        if (opts.host_tail_from >= 0 && !ends_local(devices) && devices.size() < max) {
            split = tail_split(opts, devices);
            devices.push_back(ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU));
            params.tensor_split = split.data();
        }
        devices.push_back(nullptr);  // the list ends with a null device
        params.devices = devices.data();
    }
    if (!opts.tensor_split.empty() && split.empty()) {
        split = opts.tensor_split;
        split.resize(max, 0.0f);
        params.tensor_split = split.data();
    }
    return true;
}

// A round trip to each RPC device: the weights went out without replies, so a worker
// lost during the load shows only at its next reply (its relay then records it).
void confirm_workers(const std::vector<ggml_backend_dev_t> & devices) {
    for (ggml_backend_dev_t dev : devices) {
        if (dev != nullptr && std::strcmp(ggml_backend_reg_name(ggml_backend_dev_backend_reg(dev)), "RPC") == 0) {
            size_t free = 0;
            size_t total = 0;
            ggml_backend_dev_memory(dev, &free, &total);
        }
    }
}

}  // namespace

bool cpu_offers_amx_buffer() {
    ggml_backend_dev_t cpu = ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU);
    if (cpu == nullptr) {
        return false;
    }
    auto extra = reinterpret_cast<ggml_backend_dev_get_extra_bufts_t>(
        ggml_backend_reg_get_proc_address(ggml_backend_dev_backend_reg(cpu), "ggml_backend_dev_get_extra_bufts"));
    if (extra == nullptr) {
        return false;
    }
    for (ggml_backend_buffer_type_t * b = extra(cpu); b != nullptr && *b != nullptr; ++b) {
        if (std::strcmp(ggml_backend_buft_name(*b), "AMX") == 0) {
            return true;
        }
    }
    return false;
}

std::shared_ptr<Model> Model::load(const std::string & path, const ModelLoadOptions & opts,
                                   Status & status) {
    llama_model_params params = llama_model_default_params();
    if (opts.n_gpu_layers.has_value()) {
        params.n_gpu_layers = *opts.n_gpu_layers;
    }
    if (!opts.use_mmap) {
        params.load_mode = LLAMA_LOAD_MODE_NONE;
    }
    params.load_mtp = opts.load_mtp;
    params.use_extra_bufts = opts.repack.value_or(!cpu_offers_amx_buffer());
    std::vector<std::string> patterns;  // outlive the load: the overrides point into them
    const std::vector<llama_model_tensor_buft_override> overrides = expert_overrides(opts.n_cpu_moe, patterns);
    if (opts.n_cpu_moe != 0) {
        params.tensor_buft_overrides = overrides.data();
    }
    std::vector<ggml_backend_dev_t> devices;  // outlive the load, as the patterns
    std::vector<float> split;
    std::vector<WorkerWatch> watches;
    std::vector<std::shared_ptr<RpcRelay>> relays;
    if (!place_layers(opts, params, devices, split, watches, relays, status)) {
        return nullptr;
    }
    if (opts.progress) {
        params.progress_callback = &progress_trampoline;
        params.progress_callback_user_data = const_cast<std::function<bool(float)> *>(&opts.progress);
    }
    llama_model * raw = llama_model_load_from_file(path.c_str(), params);
    if (raw != nullptr) {
        confirm_workers(devices);
    }
    attach_links(watches);
    const std::string lost = describe_losses(watches);
    if (raw == nullptr || !lost.empty()) {
        if (raw != nullptr) {
            llama_model_free(raw);  // its weights on a worker lost during the load are gone
        }
        status = Status::error(ErrorCode::model_load,
                               !lost.empty() ? "cannot load '" + path + "': " + lost :
                               "llama.cpp could not load '" + path +
                                   "' (unsupported architecture, missing tensors or a corrupt file; "
                                   "enable the 'mtpstream.llama' logger for details)");
        return nullptr;
    }
    const bool host_tail =  // place_layers appended this host's CPU
        std::find(devices.begin(), devices.end(), ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU)) != devices.end();
    return std::shared_ptr<Model>(new Model(raw, path, opts.load_mtp, params.use_extra_bufts, host_tail,
                                            std::move(watches), std::move(relays)));
}

Model::Model(llama_model * model, std::string path, bool load_mtp, bool repack, bool host_tail,
             std::vector<WorkerWatch> watches, std::vector<std::shared_ptr<RpcRelay>> relays)
    : model_(model),
      vocab_(llama_model_get_vocab(model)),
      path_(std::move(path)),
      load_mtp_(load_mtp),
      repack_(repack),
      host_tail_(host_tail),
      watches_(std::move(watches)),
      relays_(std::move(relays)) {}

std::vector<std::string> Model::rpc_relay_endpoints() const {
    std::vector<std::string> out;
    for (const auto & r : relays_) {
        out.push_back(r->endpoint());
    }
    return out;
}

Model::~Model() { llama_model_free(model_); }

std::string Model::description() const {
    char buf[256];
    const int n = llama_model_desc(model_, buf, sizeof(buf));
    return n > 0 ? std::string(buf, std::min<size_t>(static_cast<size_t>(n), sizeof(buf) - 1)) : "";
}

std::string Model::chat_template() const {
    const char * tmpl = llama_model_chat_template(model_, nullptr);
    return tmpl != nullptr ? tmpl : "";
}

std::vector<std::pair<std::string, std::string>> Model::metadata() const {
    std::vector<std::pair<std::string, std::string>> out;
    const int32_t count = llama_model_meta_count(model_);
    std::vector<char> key(512);
    std::vector<char> val(4096);
    for (int32_t i = 0; i < count; ++i) {
        int nk = llama_model_meta_key_by_index(model_, i, key.data(), key.size());
        if (nk < 0) {
            continue;
        }
        if (static_cast<size_t>(nk) >= key.size()) {
            key.resize(static_cast<size_t>(nk) + 1);
            nk = llama_model_meta_key_by_index(model_, i, key.data(), key.size());
        }
        int nv = llama_model_meta_val_str_by_index(model_, i, val.data(), val.size());
        if (nv < 0) {
            continue;
        }
        if (static_cast<size_t>(nv) >= val.size()) {
            val.resize(static_cast<size_t>(nv) + 1);
            nv = llama_model_meta_val_str_by_index(model_, i, val.data(), val.size());
        }
        out.emplace_back(std::string(key.data(), static_cast<size_t>(nk)),
                         std::string(val.data(), static_cast<size_t>(nv)));
    }
    return out;
}

std::vector<llama_token> Model::tokenize(const std::string & text, bool add_special,
                                         bool parse_special) const {
    if (text.size() > static_cast<size_t>(INT32_MAX / 2)) {
        return {};
    }
    const auto len = static_cast<int32_t>(text.size());
    std::vector<llama_token> out(static_cast<size_t>(len) + 4);
    int32_t n = llama_tokenize(vocab_, text.data(), len, out.data(), static_cast<int32_t>(out.size()),
                               add_special, parse_special);
    if (n < 0) {
        out.resize(static_cast<size_t>(-n));
        n = llama_tokenize(vocab_, text.data(), len, out.data(), static_cast<int32_t>(out.size()),
                           add_special, parse_special);
    }
    out.resize(static_cast<size_t>(std::max(n, 0)));
    return out;
}

std::string Model::detokenize(const std::vector<llama_token> & ids) const {
    if (ids.empty()) {
        return "";
    }
    std::vector<char> buf(ids.size() * 16 + 16);
    int32_t n = llama_detokenize(vocab_, ids.data(), static_cast<int32_t>(ids.size()), buf.data(),
                                 static_cast<int32_t>(buf.size()), false, false);
    if (n < 0) {
        buf.resize(static_cast<size_t>(-n) + 1);
        n = llama_detokenize(vocab_, ids.data(), static_cast<int32_t>(ids.size()), buf.data(),
                             static_cast<int32_t>(buf.size()), false, false);
    }
    return std::string(buf.data(), static_cast<size_t>(std::max(n, 0)));
}

std::string Model::token_text(llama_token id) const {
    const char * text = llama_vocab_get_text(vocab_, id);
    return text != nullptr ? std::string(text) : std::string();
}

std::string Model::token_to_piece(llama_token id, bool special) const {
    char small[64];
    int32_t n = llama_token_to_piece(vocab_, id, small, sizeof(small), 0, special);
    if (n >= 0) {
        return std::string(small, static_cast<size_t>(n));
    }
    std::string big(static_cast<size_t>(-n), '\0');
    n = llama_token_to_piece(vocab_, id, big.data(), static_cast<int32_t>(big.size()), 0, special);
    big.resize(static_cast<size_t>(std::max(n, 0)));
    return big;
}

}  // namespace mtpstream

#include "device_argmax.hpp"

#include "ggml-backend.h"
#include "ggml.h"

namespace mtpstream {

namespace {

struct ArgmaxState {
    bool ready = false;  // set by backend_init
};

ArgmaxState & state_of(const llama_sampler * s) { return *static_cast<ArgmaxState *>(s->ctx); }

const char * argmax_name(const llama_sampler *) { return "mtpstream-device-argmax"; }

// On the host (a chain llama.cpp did not offload): the first maximum.
void argmax_apply(llama_sampler *, llama_token_data_array * cur_p) {
    if (cur_p->size == 0) {
        return;
    }
    size_t best = 0;
    for (size_t i = 1; i < cur_p->size; ++i) {
        if (cur_p->data[i].logit > cur_p->data[best].logit) {
            best = i;
        }
    }
    cur_p->selected = static_cast<int64_t>(best);
}

llama_sampler * argmax_clone(const llama_sampler * s);

void argmax_free(llama_sampler * s) { delete &state_of(s); }

bool argmax_backend_init(llama_sampler * s, ggml_backend_buffer_type_t buft, uint32_t) {
    ArgmaxState & st = state_of(s);
    ggml_backend_dev_t dev = ggml_backend_buft_get_device(buft);
    if (dev == nullptr) {  // llama.cpp's CPU buffer type
        st.ready = true;
        return true;
    }
    ggml_init_params params{};
    params.mem_size = 4 * ggml_tensor_overhead();
    params.no_alloc = true;
    ggml_context * ctx = ggml_init(params);
    if (ctx == nullptr) {
        return false;
    }
    ggml_tensor * row = ggml_new_tensor_1d(ctx, GGML_TYPE_F32, 64);
    st.ready = ggml_backend_dev_supports_op(dev, ggml_argmax(ctx, row));
    ggml_free(ctx);
    return st.ready;
}

void argmax_backend_apply(llama_sampler *, ggml_context * ctx, ggml_cgraph *, llama_sampler_data * data) {
    ggml_tensor * row = ggml_reshape_1d(ctx, data->logits, ggml_nelements(data->logits));
    data->sampled = ggml_argmax(ctx, row);
    ggml_set_name(data->sampled, "mtp_draft_argmax");
    data->logits = nullptr;  // the token is all the host needs
}

void argmax_copy_state(const llama_sampler *, llama_sampler *) {}  // no state

llama_sampler_i argmax_iface = {
    /* .name              = */ argmax_name,
    /* .accept            = */ nullptr,
    /* .apply             = */ argmax_apply,
    /* .reset             = */ nullptr,
    /* .clone             = */ argmax_clone,
    /* .free              = */ argmax_free,
    /* .backend_init      = */ argmax_backend_init,
    /* .backend_accept    = */ nullptr,
    /* .backend_apply     = */ argmax_backend_apply,
    /* .backend_set_input = */ nullptr,
    /* .backend_reset     = */ nullptr,
    /* .copy_state        = */ argmax_copy_state,
};

llama_sampler * argmax_clone(const llama_sampler *) { return llama_sampler_init(&argmax_iface, new ArgmaxState()); }

}  // namespace

SamplerPtr make_device_argmax() {
    SamplerPtr chain(llama_sampler_chain_init(llama_sampler_chain_default_params()));
    llama_sampler_chain_add(chain.get(), llama_sampler_init(&argmax_iface, new ArgmaxState()));
    return chain;
}

bool device_argmax_ready(llama_sampler * chain) {
    llama_sampler * s = llama_sampler_chain_get(chain, 0);
    return s != nullptr && state_of(s).ready;
}

}  // namespace mtpstream

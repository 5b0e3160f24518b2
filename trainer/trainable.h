#pragma once
// Which parameters of a Decoder a run trains. Everything not selected gets requires_grad(false), so
// autograd neither computes nor stores its gradient and the optimizer keeps no state for it.
//
// A selection is a list of items; the parameters selected are the union of what the items select:
//   up_proj     the MLA up-projections: every layer's wkv_b (HF kv_b_proj) and, when the model has a
//               query LoRA, wq_b (q_b_proj). TransMLA's cheapest recovery: the latent down-projection, the
//               rope key and everything outside attention stay as converted. MLA models only.
//   attention   every tensor of every layer's attention block (HF `self_attn.*`): projections, their
//               biases and the norms inside MLA attention (q_a_layernorm, kv_a_layernorm). Not the
//               pre-attention norm (input_layernorm): add it with a pattern if wanted.
//   all         every parameter.
//   <pattern>   anything else is a name pattern, matched against the WHOLE name of each parameter under
//               both naming schemes; it selects the parameter when it matches either:
//                 Hugging Face names   model.layers.0.self_attn.kv_b_proj.weight, lm_head.weight
//                 mlaforge names       layers.0.attn.wkv_b.weight, lm_head.weight
//               `re:<regex>` is an ECMAScript regular expression (std::regex, whole-name match);
//               otherwise it is a glob: `*` matches any run of characters (dots included), `?` one.
//               Examples: `*.kv_b_proj.weight`, `layers.0.*`, `*lm_head*`,
//               `re:model\.layers\.(0|1)\.self_attn\..*` (globs have no [...] classes: use re:).
// Errors (mlaforge::Error) name the offending item: a pattern that matches no parameter, a preset the
// model does not have (up_proj on a GQA model), an invalid regex, an empty list. On error the model is
// left unchanged.
#include <torch/torch.h>

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "model/decoder.h"

namespace mlaforge {

struct TrainableSelection {
  std::vector<std::string> trainable;  // mlaforge names, in model order
  std::vector<std::string> frozen;
  int64_t trainable_numel = 0;         // elements
  int64_t frozen_numel = 0;
};

struct TrainableOptions {
  // Cast frozen parameters to this dtype (typically bfloat16) after selecting. Only valid when the model
  // computes in that dtype, i.e. with the optimizer's bf16 mixed-precision mode, which keeps fp32 masters
  // of the trainable parameters and needs every model parameter in bf16: frozen parameters then need
  // no fp32 copy at all. (A Linear cannot mix an fp32 weight with bf16 activations, so casting frozen
  // parameters of an fp32 run would break its forward; check_uniform_dtype reports that.)
  std::optional<torch::Dtype> frozen_dtype;
};

// Splits "up_proj,*.q_proj.weight" on commas (items trimmed, empty items dropped). A regex containing a
// comma must be passed in the list form (a YAML list in a recipe).
std::vector<std::string> parse_trainable_spec(const std::string& spec);

// Applies the selection to the model (requires_grad true/false on every parameter) and returns it.
TrainableSelection select_trainable(DecoderImpl& model, const std::vector<std::string>& items,
                                    const TrainableOptions& options = {});
TrainableSelection select_trainable(DecoderImpl& model, const std::string& spec,
                                    const TrainableOptions& options = {});

// Whether `name` (either scheme) matches one pattern item as described above; throws on a bad regex.
bool trainable_pattern_matches(const std::string& pattern, const std::string& name);

// Casts every parameter with requires_grad == false to `dtype`, in place (the Parameter objects stay the
// same, so module pointers stay valid).
void cast_frozen_parameters(DecoderImpl& model, torch::Dtype dtype);

// Throws naming the first parameter whose dtype is not `dtype` (the forward needs one compute dtype).
void check_uniform_dtype(const DecoderImpl& model, torch::Dtype dtype);

// The parameters with requires_grad, (mlaforge name, tensor), in model order: what the optimizer takes.
std::vector<std::pair<std::string, torch::Tensor>> trainable_parameters(const DecoderImpl& model);

}  // namespace mlaforge

#pragma once
// The conversion as one pass over the layers, streaming weights from disk: peak memory is one layer's
// weights plus the calibration (and evaluation) activations, not the model. For each layer i:
//   1. read layer i's weights (WeightReader: a lazily mapped checkpoint drops its pages after each read);
//   2. accumulate its KV moments (fp64) over the calibration states at its input;
//   3. convert its attention (convert_layer), optionally add the deployable latent anchor;
//   4. push the calibration states through the converted layer (sequential calibration: layer i + 1 is
//      calibrated on what the converted layers before it produce) or the original one (one pass);
//   5. push the evaluation documents through both the original and the converted layer, so the
//      perplexity before and after comes out of the same pass without ever holding either model;
//   6. hand the layer's tensors (converted attention, everything else as stored) to the shard writer.
// The result is bitwise what the in-memory convert_sequential / convert_to_mla produce.
#include <torch/torch.h>

#include <string>
#include <vector>

#include "convert/transmla.h"
#include "model/safetensors.h"
#include "model/weight_reader.h"
#include "trainer/evaluate.h"

namespace mlaforge {

struct PipelineOptions {
  ConvertOptions convert;
  bool sequential = true;            // false: every layer calibrated on the original model's activations
  bool deployable = false;           // add the latent-norm anchor (make_deployable, per layer)
  // Portable (vLLM / SGLang): the stock latent norm with its weight fitted to the calibration latents,
  // no anchor and no bias anywhere (make_portable_config). Approximate: its cost is the evaluation's.
  bool portable = false;
  std::vector<int64_t> layer_ranks;  // per-layer kv_lora_rank (--kv-budget); empty: uniform
  torch::Device device = torch::kCPU;
  torch::Dtype out_dtype = torch::kFloat32;  // dtype of every written tensor
  std::string out_dir;               // empty: write nothing
  uint64_t max_shard_bytes = 2ull << 30;
  bool keep_weights = false;         // result.conversion.weights: the whole converted model in memory
  bool keep_moments = false;         // result.moments
  bool keep_spectra = false;         // result.spectra (for --kv-budget)
  bool progress = true;
  // Checks every converted layer, on the first calibration document, against the converter's own
  // reference MLA attention (interleaved-pair RoPE written out), so an engine/layout mismatch fails the
  // conversion instead of producing a broken model. Relative tolerance on the attention output.
  bool verify_engine = false;
  double verify_tolerance = 1e-3;
};

struct PipelineResult {
  ConvertResult conversion;  // config, config_json, per-layer reports and rotations; weights if kept
  KVMoments moments;         // if kept
  std::vector<torch::Tensor> spectra;  // per layer, if kept: LayerConversion::spectrum
  bool evaluated = false;
  EvalResult before, after;  // mean NLL of the original and the converted model on the evaluation docs
  double engine_max_diff = 0;  // largest |engine - reference| over the verified layers (relative to scale)
  ShardedWriteResult files;
  double seconds = 0;
};

// `config` is the original model's (check_convertible must pass); `weights` its tensors under HF names.
PipelineResult convert_streaming(const ModelConfig& config, const WeightReader& weights,
                                 const std::vector<std::vector<int64_t>>& calibration,
                                 const std::vector<std::vector<int64_t>>& evaluation, const PipelineOptions& options);

}  // namespace mlaforge

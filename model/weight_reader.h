#pragma once
// Tensor-at-a-time access to a loaded model's weights, whatever the format: what lets the converter
// stream a model larger than memory. A lazily loaded Hugging Face folder (LoadOptions::lazy_weights) is
// read from its mapping on demand, and the pages each read touched are dropped from the resident set
// right away; the in-memory formats (GGUF after dequantisation, llama2.c) just hand out their tensors.
#include <torch/torch.h>

#include <string>
#include <vector>

#include "model/checkpoint.h"

namespace mlaforge {

class WeightReader {
 public:
  explicit WeightReader(const ModelSource& source);  // keeps a reference: the source must outlive it
  explicit WeightReader(const StateDict& weights, std::string origin = "weights");

  std::vector<std::string> names() const;  // sorted HF names
  bool contains(const std::string& name) const;
  // An owned CPU tensor in the stored dtype. Throws naming the source and the tensor when absent.
  torch::Tensor get(const std::string& name) const;
  // Bytes of all tensors as stored.
  uint64_t total_bytes() const;
  const std::string& origin() const { return origin_; }

 private:
  const StateDict* memory_ = nullptr;
  const SafetensorsCheckpoint* checkpoint_ = nullptr;
  std::string origin_;
};

// Every tensor of the reader in memory (for the in-memory paths: build_model, tests).
StateDict read_all(const WeightReader& reader);

}  // namespace mlaforge

#pragma once
// Bridges between the torch-free file formats and LibTorch tensors.
#include <torch/torch.h>

#include <map>
#include <string>

#include "core/dtype.h"
#include "model/checkpoint.h"
#include "model/safetensors.h"

namespace mlaforge {

torch::ScalarType to_torch_dtype(DType dtype);
DType from_torch_dtype(torch::ScalarType type);  // throws for types safetensors cannot hold
// Parses "float32" | "fp32" | "bfloat16" | "bf16" | "float16" | "fp16".
torch::Dtype parse_torch_dtype(const std::string& name);
std::string torch_dtype_name(torch::Dtype dtype);  // "float32", "bfloat16", "float16"

// Copies a tensor out of a mapped safetensors file (the mapping may go away afterwards).
torch::Tensor to_torch(const SafetensorsCheckpoint::TensorRef& ref);
// Every tensor of a checkpoint; `filter` (if set) chooses which names to load.
StateDict load_safetensors_state(const SafetensorsCheckpoint& checkpoint);

// Writes tensors (made contiguous on CPU) as one file or shards; see write_sharded_safetensors.
ShardedWriteResult save_state_dict(const std::string& dir, const StateDict& tensors,
                                   uint64_t max_shard_bytes = 5ull << 30,
                                   const std::map<std::string, std::string>& metadata = {{"format", "pt"}});
void save_safetensors_file(const std::string& path, const StateDict& tensors,
                           const std::map<std::string, std::string>& metadata = {{"format", "pt"}});

}  // namespace mlaforge

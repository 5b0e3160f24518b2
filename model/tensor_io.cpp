#include "model/tensor_io.h"

#include "core/error.h"

namespace mlaforge {

torch::ScalarType to_torch_dtype(DType dtype) {
  switch (dtype) {
    case DType::F64: return torch::kFloat64;
    case DType::F32: return torch::kFloat32;
    case DType::F16: return torch::kFloat16;
    case DType::BF16: return torch::kBFloat16;
    case DType::I64: return torch::kInt64;
    case DType::I32: return torch::kInt32;
    case DType::I16: return torch::kInt16;
    case DType::I8: return torch::kInt8;
    case DType::U8: return torch::kUInt8;
    case DType::Bool: return torch::kBool;
  }
  fail("unknown dtype");
}

DType from_torch_dtype(torch::ScalarType type) {
  switch (type) {
    case torch::kFloat64: return DType::F64;
    case torch::kFloat32: return DType::F32;
    case torch::kFloat16: return DType::F16;
    case torch::kBFloat16: return DType::BF16;
    case torch::kInt64: return DType::I64;
    case torch::kInt32: return DType::I32;
    case torch::kInt16: return DType::I16;
    case torch::kInt8: return DType::I8;
    case torch::kUInt8: return DType::U8;
    case torch::kBool: return DType::Bool;
    default: fail("tensor dtype ", c10::toString(type), " cannot be stored in safetensors");
  }
}

torch::Dtype parse_torch_dtype(const std::string& name) {
  if (name == "float32" || name == "fp32" || name == "f32") return torch::kFloat32;
  if (name == "bfloat16" || name == "bf16") return torch::kBFloat16;
  if (name == "float16" || name == "fp16" || name == "f16" || name == "half") return torch::kFloat16;
  if (name == "float64" || name == "fp64") return torch::kFloat64;
  fail("unknown dtype '", name, "' (expected float32, bfloat16, float16 or float64)");
}

std::string torch_dtype_name(torch::Dtype dtype) {
  switch (dtype) {
    case torch::kFloat32: return "float32";
    case torch::kBFloat16: return "bfloat16";
    case torch::kFloat16: return "float16";
    case torch::kFloat64: return "float64";
    default: return c10::toString(dtype);
  }
}

torch::Tensor to_torch(const SafetensorsCheckpoint::TensorRef& ref) {
  const auto& shape = ref.info->shape;
  auto t = torch::empty(std::vector<int64_t>(shape.begin(), shape.end()), to_torch_dtype(ref.info->dtype));
  // memcpy rather than from_blob: the mapped bytes need not be aligned for the element type.
  std::memcpy(t.data_ptr(), ref.data, ref.info->nbytes());
  return t;
}

StateDict load_safetensors_state(const SafetensorsCheckpoint& checkpoint) {
  StateDict out;
  for (const std::string& name : checkpoint.names()) out[name] = to_torch(checkpoint.get(name));
  return out;
}

namespace {

std::vector<TensorToWrite> tensors_to_write(const StateDict& tensors, std::vector<torch::Tensor>& keep_alive) {
  std::vector<TensorToWrite> out;
  out.reserve(tensors.size());
  for (const auto& [name, t] : tensors) {
    auto c = t.detach().to(torch::kCPU).contiguous();
    keep_alive.push_back(c);
    out.push_back({name, from_torch_dtype(c.scalar_type()), c.sizes().vec(), c.data_ptr()});
  }
  return out;
}

}  // namespace

ShardedWriteResult save_state_dict(const std::string& dir, const StateDict& tensors, uint64_t max_shard_bytes,
                                   const std::map<std::string, std::string>& metadata) {
  std::vector<torch::Tensor> keep_alive;
  return write_sharded_safetensors(dir, "model", tensors_to_write(tensors, keep_alive), max_shard_bytes, metadata);
}

void save_safetensors_file(const std::string& path, const StateDict& tensors,
                           const std::map<std::string, std::string>& metadata) {
  std::vector<torch::Tensor> keep_alive;
  write_safetensors(path, tensors_to_write(tensors, keep_alive), metadata);
}

}  // namespace mlaforge

#include "model/weight_reader.h"

#include "core/error.h"
#include "core/mmap_file.h"
#include "model/safetensors.h"
#include "model/tensor_io.h"

namespace mlaforge {

WeightReader::WeightReader(const ModelSource& source) : origin_(source.path) {
  if (source.checkpoint) {
    checkpoint_ = source.checkpoint.get();
  } else {
    memory_ = &source.weights;
  }
}

WeightReader::WeightReader(const StateDict& weights, std::string origin) : memory_(&weights), origin_(std::move(origin)) {}

std::vector<std::string> WeightReader::names() const {
  if (checkpoint_) return checkpoint_->names();
  std::vector<std::string> out;
  out.reserve(memory_->size());
  for (const auto& [name, t] : *memory_) out.push_back(name);
  return out;
}

bool WeightReader::contains(const std::string& name) const {
  return checkpoint_ ? checkpoint_->contains(name) : memory_->count(name) > 0;
}

torch::Tensor WeightReader::get(const std::string& name) const {
  if (checkpoint_) {
    const auto ref = checkpoint_->get(name);  // throws naming the checkpoint and the tensor
    auto t = to_torch(ref);
    drop_mapped_pages(ref.data, ref.info->nbytes());
    return t;
  }
  auto it = memory_->find(name);
  MLA_CHECK(it != memory_->end(), origin_, ": missing tensor '", name, "'");
  return it->second;
}

uint64_t WeightReader::total_bytes() const {
  if (checkpoint_) return checkpoint_->total_bytes();
  uint64_t n = 0;
  for (const auto& [name, t] : *memory_) n += static_cast<uint64_t>(t.numel()) * t.element_size();
  return n;
}

StateDict read_all(const WeightReader& reader) {
  StateDict out;
  for (const auto& name : reader.names()) out[name] = reader.get(name);
  return out;
}

}  // namespace mlaforge

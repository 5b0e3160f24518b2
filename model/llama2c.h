#pragma once
// llama2.c checkpoint reader (Karpathy's legacy "version 0" .bin export), torch-free.
//
// Layout: 7 little-endian int32 (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len);
// a negative vocab_size means the classifier is not tied and follows at the end. Then float32 arrays:
//   token_embedding_table [V][dim]
//   rms_att_weight [L][dim]
//   wq [L][n_heads*head][dim], wk [L][kv_dim][dim], wv [L][kv_dim][dim], wo [L][dim][n_heads*head]
//   rms_ffn_weight [L][dim]
//   w1 [L][hidden][dim], w2 [L][dim][hidden], w3 [L][hidden][dim]
//   rms_final_weight [dim]
//   freq_cis_real [seq_len][head/2], freq_cis_imag [seq_len][head/2]   (optional when tied)
//   wcls [V][dim]                                                     (untied only)
// head = dim / n_heads, kv_dim = n_kv_heads * head. Matrices are [out][in]. RoPE rotates adjacent pairs.
#include <cstdint>
#include <string>
#include <vector>

#include "core/mmap_file.h"

namespace mlaforge {

struct Llama2cHeader {
  int64_t dim = 0;
  int64_t hidden_dim = 0;
  int64_t n_layers = 0;
  int64_t n_heads = 0;
  int64_t n_kv_heads = 0;
  int64_t vocab_size = 0;  // absolute value
  int64_t seq_len = 0;
  bool shared_classifier = true;  // vocab_size was positive
  int64_t head_size() const { return dim / n_heads; }
  int64_t kv_dim() const { return n_kv_heads * head_size(); }
};

struct Llama2cArray {
  std::string name;            // "wq", "token_embedding_table", ...
  std::vector<int64_t> shape;  // row-major; per-layer arrays lead with n_layers
  uint64_t offset = 0;         // bytes from the start of the file
  int64_t numel = 0;
};

class Llama2cFile {
 public:
  // Maps the file, validates the header and that the file size is exactly what the header implies
  // (with or without the freq_cis tables). Throws mlaforge::Error naming the file.
  static Llama2cFile open(const std::string& path);

  const std::string& path() const { return file_.path(); }
  const Llama2cHeader& header() const { return header_; }
  const std::vector<Llama2cArray>& arrays() const { return arrays_; }
  const Llama2cArray* find(const std::string& name) const;
  const Llama2cArray& get(const std::string& name) const;  // throws naming the file when absent
  bool has_freq_cis() const { return has_freq_cis_; }
  // Pointer to the float32 data (the header is 28 bytes, so arrays are 4-byte aligned).
  const float* data(const Llama2cArray& array) const {
    return reinterpret_cast<const float*>(file_.data() + array.offset);
  }

 private:
  Llama2cFile() = default;
  MappedFile file_;
  Llama2cHeader header_;
  std::vector<Llama2cArray> arrays_;
  bool has_freq_cis_ = false;
};

}  // namespace mlaforge

#include "model/llama2c.h"

#include <cstring>

#include "core/error.h"

namespace mlaforge {
namespace {

constexpr uint64_t kHeaderBytes = 7 * 4;
constexpr uint32_t kExportMagic = 0x616b3432;  // "ak42": llama2.c export.py version 1/2 files
constexpr int64_t kMaxDimension = int64_t{1} << 24;

}  // namespace

Llama2cFile Llama2cFile::open(const std::string& path) {
  Llama2cFile f;
  f.file_ = MappedFile(path);
  const uint64_t size = f.file_.size();
  MLA_CHECK(size >= kHeaderBytes, path, ": too small for a llama2.c checkpoint (", size,
            " bytes, the header alone is 28)");
  int32_t h[7];
  std::memcpy(h, f.file_.data(), sizeof(h));
  if (static_cast<uint32_t>(h[0]) == kExportMagic)
    fail(path, ": llama2.c export version ", h[1],
         " (magic \"ak42\") is not supported; export with the legacy format (export.py --version 0)");

  Llama2cHeader& hd = f.header_;
  hd.dim = h[0];
  hd.hidden_dim = h[1];
  hd.n_layers = h[2];
  hd.n_heads = h[3];
  hd.n_kv_heads = h[4];
  hd.shared_classifier = h[5] > 0;
  hd.vocab_size = h[5] < 0 ? -static_cast<int64_t>(h[5]) : h[5];
  hd.seq_len = h[6];
  auto check_dim = [&](int64_t v, const char* name) {
    MLA_CHECK(v > 0 && v <= kMaxDimension, path, ": llama2.c header field ", name, " = ", v,
              " is out of range (not a llama2.c checkpoint?)");
  };
  check_dim(hd.dim, "dim");
  check_dim(hd.hidden_dim, "hidden_dim");
  check_dim(hd.n_layers, "n_layers");
  check_dim(hd.n_heads, "n_heads");
  check_dim(hd.n_kv_heads, "n_kv_heads");
  check_dim(hd.vocab_size, "vocab_size");
  check_dim(hd.seq_len, "seq_len");
  MLA_CHECK(hd.dim % hd.n_heads == 0, path, ": llama2.c header: dim ", hd.dim, " is not a multiple of n_heads ",
            hd.n_heads);
  MLA_CHECK(hd.n_heads % hd.n_kv_heads == 0, path, ": llama2.c header: n_heads ", hd.n_heads,
            " is not a multiple of n_kv_heads ", hd.n_kv_heads);
  MLA_CHECK(hd.head_size() % 2 == 0, path, ": llama2.c header: head size ", hd.head_size(),
            " must be even for RoPE");

  const int64_t L = hd.n_layers, D = hd.dim, F = hd.hidden_dim, V = hd.vocab_size, KV = hd.kv_dim();
  const int64_t head = hd.head_size();
  uint64_t offset = kHeaderBytes;
  auto add = [&](const char* name, std::vector<int64_t> shape) {
    Llama2cArray a;
    a.name = name;
    a.numel = 1;
    for (int64_t s : shape) a.numel *= s;
    a.shape = std::move(shape);
    a.offset = offset;
    offset += static_cast<uint64_t>(a.numel) * 4;
    f.arrays_.push_back(std::move(a));
  };
  add("token_embedding_table", {V, D});
  add("rms_att_weight", {L, D});
  add("wq", {L, D, D});
  add("wk", {L, KV, D});
  add("wv", {L, KV, D});
  add("wo", {L, D, D});
  add("rms_ffn_weight", {L, D});
  add("w1", {L, F, D});
  add("w2", {L, D, F});
  add("w3", {L, F, D});
  add("rms_final_weight", {D});
  const uint64_t base = offset;
  const uint64_t freq_bytes = 2 * static_cast<uint64_t>(hd.seq_len) * static_cast<uint64_t>(head / 2) * 4;
  const uint64_t cls_bytes = static_cast<uint64_t>(V) * static_cast<uint64_t>(D) * 4;

  if (hd.shared_classifier) {
    if (size == base + freq_bytes) {
      f.has_freq_cis_ = true;
    } else if (size != base) {
      fail(path, ": file size ", size, " bytes does not match the llama2.c header (dim=", D, ", hidden_dim=", F,
           ", n_layers=", L, ", n_heads=", hd.n_heads, ", n_kv_heads=", hd.n_kv_heads, ", vocab_size=", V,
           ", seq_len=", hd.seq_len, "): expected ", base + freq_bytes, " bytes (or ", base,
           " without the freq_cis tables)", size < base ? "; the file is truncated" : "");
    }
  } else {
    // llama2.c's run.c skips the freq_cis tables before reading the untied classifier.
    if (size != base + freq_bytes + cls_bytes)
      fail(path, ": file size ", size, " bytes does not match the llama2.c header (dim=", D, ", hidden_dim=", F,
           ", n_layers=", L, ", n_heads=", hd.n_heads, ", n_kv_heads=", hd.n_kv_heads, ", vocab_size=-", V,
           " (untied classifier), seq_len=", hd.seq_len, "): expected ", base + freq_bytes + cls_bytes, " bytes",
           size < base + freq_bytes + cls_bytes ? "; the file is truncated" : "");
    f.has_freq_cis_ = true;
  }
  if (f.has_freq_cis_) {
    add("freq_cis_real", {hd.seq_len, head / 2});
    add("freq_cis_imag", {hd.seq_len, head / 2});
  }
  if (!hd.shared_classifier) add("wcls", {V, D});
  return f;
}

const Llama2cArray* Llama2cFile::find(const std::string& name) const {
  for (const auto& a : arrays_)
    if (a.name == name) return &a;
  return nullptr;
}

const Llama2cArray& Llama2cFile::get(const std::string& name) const {
  const Llama2cArray* a = find(name);
  MLA_CHECK(a != nullptr, path(), ": llama2.c checkpoint has no array '", name, "'");
  return *a;
}

}  // namespace mlaforge

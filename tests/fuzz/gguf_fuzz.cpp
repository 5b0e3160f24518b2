// libFuzzer target for the GGUF reader (model/gguf.cpp): header, metadata, tensor infos, and the
// dequantisation of every (small) tensor of an accepted file. mlaforge::Error is the expected way to
// reject input; any other exception, a sanitizer report, or an accepted file that breaks the reader's
// guarantees is a bug.
//   clang++ -std=c++20 -O1 -g -fsanitize=fuzzer,address,undefined -I. tests/fuzz/gguf_fuzz.cpp \
//     model/gguf.cpp core/dtype.cpp core/mmap_file.cpp core/threads.cpp -o gguf_fuzz
#include <cstdint>
#include <cstdlib>
#include <vector>

#include "core/error.h"
#include "model/gguf.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const mlaforge::GgufFile f = mlaforge::GgufFile::from_memory(data, size, "fuzz.gguf");
    for (const auto& [key, value] : f.metadata())
      if (f.find(key) != &value) std::abort();
    for (const mlaforge::GgufTensorInfo& t : f.tensors()) {
      if (f.find_tensor(t.name) != &t) std::abort();
      if (f.data_offset() + t.offset + t.nbytes > size) std::abort();
      if (t.numel > (1 << 16) || !mlaforge::ggml_can_dequantize(t.type)) continue;
      std::vector<float> out(static_cast<size_t>(t.numel));
      f.dequantize(t, out.data(), 1);
    }
  } catch (const mlaforge::Error&) {
  }
  return 0;
}

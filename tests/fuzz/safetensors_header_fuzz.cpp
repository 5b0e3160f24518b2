// libFuzzer target for parse_safetensors_header: the one place where untrusted checkpoint bytes are
// interpreted. mlaforge::Error is the expected way to reject input; any other exception, a sanitizer
// report, or a header that passes but breaks the parser's own guarantees is a bug.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "core/error.h"
#include "model/safetensors.h"

namespace {

// The parser's promises about a header it accepted; a broken one aborts so the fuzzer reports it.
void check_invariants(const mlaforge::SafetensorsHeader& h, size_t size) {
  uint64_t covered = 0;
  for (const mlaforge::TensorInfo& t : h.tensors) {
    if (t.begin != covered || t.end < t.begin || t.nbytes() != t.end - t.begin) std::abort();
    if (h.find(t.name) != &t) std::abort();
    covered = t.end;
  }
  if (h.data_start + covered != size) std::abort();
}

void parse(const uint8_t* data, size_t size) {
  try {
    check_invariants(mlaforge::parse_safetensors_header(data, size, "fuzz.safetensors"), size);
  } catch (const mlaforge::Error&) {
  }
}

}  // namespace

// Two modes, chosen by the first byte, so that mutations reach the JSON checks as well as the framing:
//   even: the rest is a raw file image (length prefix, header, data) as found on disk;
//   odd:  bytes 1-2 are a data-section size (LE) and the rest is header text; the length prefix is
//         made consistent here, so mutating the text does not just break the prefix.
extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  if ((data[0] & 1) == 0) {
    parse(data + 1, size - 1);
    return 0;
  }
  if (size < 3) return 0;
  const size_t data_bytes = data[1] | (static_cast<size_t>(data[2]) << 8);
  const size_t header_len = size - 3;
  std::vector<uint8_t> file(8 + header_len + data_bytes, 0);
  for (int i = 0; i < 8; ++i) file[i] = static_cast<uint8_t>(static_cast<uint64_t>(header_len) >> (8 * i));
  std::memcpy(file.data() + 8, data + 3, header_len);
  parse(file.data(), file.size());
  return 0;
}

#pragma once
// Fast CRC-32C (Castagnoli, reflected polynomial 0x82F63B78) for checkpoint files, torch-free.
//
// Checkpoints are checksummed on the save path and verified before a resume, so the checksum must run at
// memory speed, not at the ~0.4 GB/s of a byte-at-a-time table (what trainer/metrics_tfevents.cpp uses for
// its tiny records). On x86-64 with SSE4.2 the CRC32 instruction is used on three independent streams at
// once (the instruction has a 3-cycle latency but issues every cycle), and the three partial CRCs are
// joined with a precomputed "append L zero bytes" operator; elsewhere a portable slice-by-8 table runs.
// Both give the same values; crc32c_extend(0, "123456789", 9) == 0xE3069283 (the standard check value).
#include <cstddef>
#include <cstdint>
#include <string>

namespace mlaforge {

// CRC-32C of (previous bytes + data), where `crc` is the CRC-32C of the previous bytes (0 for none):
// crc32c_extend(crc32c_extend(0, a), b) == CRC of a followed by b.
uint32_t crc32c_extend(uint32_t crc, const void* data, size_t size);
inline uint32_t crc32c(const void* data, size_t size) { return crc32c_extend(0, data, size); }

// CRC-32C of A followed by B from crc_a = CRC(A), crc_b = CRC(B) and B's length: lets the data be
// checksummed on another thread while the header that precedes it in the file is still being written.
// O(log len_b) carry-less multiplications modulo the polynomial.
uint32_t crc32c_combine(uint32_t crc_a, uint32_t crc_b, uint64_t len_b);

// The portable slice-by-8 path, whatever the CPU (exposed so the tests compare both paths).
uint32_t crc32c_extend_portable(uint32_t crc, const void* data, size_t size);

// Which path crc32c_extend takes on this machine: "sse4.2 x3" or "slice-by-8".
const char* crc32c_implementation();

// The spelling of a checksum in checkpoint manifests: "crc32c:" + 8 lower-case hex digits. The algorithm
// is part of the string so a later format can change it without a new field.
std::string crc32c_string(uint32_t crc);
// Parses crc32c_string's output; false for anything else.
bool parse_crc32c_string(const std::string& text, uint32_t* crc);

}  // namespace mlaforge

#include "trainer/checksum.h"

#include <array>
#include <bit>
#include <cstdio>
#include <cstring>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <nmmintrin.h>
#define MLAFORGE_CRC32C_X86 1
#endif

namespace mlaforge {
namespace {

static_assert(std::endian::native == std::endian::little, "slice-by-8 below reads words little-endian");

constexpr uint32_t kPoly = 0x82F63B78u;  // CRC-32C, bit-reflected

// kTables[0] is the classic byte table; kTables[k][b] is the register after byte b followed by k zero
// bytes, which is what lets slice-by-8 fold eight bytes with eight independent lookups.
using Tables = std::array<std::array<uint32_t, 256>, 8>;
constexpr Tables make_tables() {
  Tables t{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int bit = 0; bit < 8; ++bit) c = (c & 1u) ? (c >> 1) ^ kPoly : c >> 1;
    t[0][i] = c;
  }
  for (int k = 1; k < 8; ++k)
    for (uint32_t i = 0; i < 256; ++i) t[k][i] = (t[k - 1][i] >> 8) ^ t[0][t[k - 1][i] & 0xFFu];
  return t;
}
constexpr Tables kTables = make_tables();

// The "raw" register update: no pre/post inversion. It is linear over GF(2) in (register, data) jointly,
// which is what the three-stream combination relies on.
uint32_t raw_portable(uint32_t r, const uint8_t* p, size_t n) {
  while (n > 0 && (reinterpret_cast<uintptr_t>(p) & 7u) != 0) {
    r = kTables[0][(r ^ *p++) & 0xFFu] ^ (r >> 8);
    --n;
  }
  while (n >= 8) {
    uint64_t w;
    std::memcpy(&w, p, 8);
    w ^= r;
    r = kTables[7][w & 0xFF] ^ kTables[6][(w >> 8) & 0xFF] ^ kTables[5][(w >> 16) & 0xFF] ^
        kTables[4][(w >> 24) & 0xFF] ^ kTables[3][(w >> 32) & 0xFF] ^ kTables[2][(w >> 40) & 0xFF] ^
        kTables[1][(w >> 48) & 0xFF] ^ kTables[0][w >> 56];
    p += 8;
    n -= 8;
  }
  while (n-- > 0) r = kTables[0][(r ^ *p++) & 0xFFu] ^ (r >> 8);
  return r;
}

#ifdef MLAFORGE_CRC32C_X86

// Bytes per stream in one three-stream block. 8 KiB: long enough that the combination (two table shifts
// per 24 KiB) costs nothing, short enough that the tail handled by one stream stays small.
constexpr size_t kStream = 8192;

// shift(r) = raw(r, kStream zero bytes). Linear in r, so it is four byte-indexed tables built from the
// images of the 32 basis vectors (computed once, ~0.3 ms).
struct ShiftTables {
  std::array<std::array<uint32_t, 256>, 4> t{};
  ShiftTables() {
    static const uint8_t zeros[kStream] = {};
    uint32_t basis[32];
    for (int j = 0; j < 32; ++j) basis[j] = raw_portable(1u << j, zeros, kStream);
    for (int k = 0; k < 4; ++k)
      for (uint32_t b = 0; b < 256; ++b) {
        uint32_t v = 0;
        for (int i = 0; i < 8; ++i)
          if (b & (1u << i)) v ^= basis[8 * k + i];
        t[k][b] = v;
      }
  }
  uint32_t shift(uint32_t r) const {
    return t[0][r & 0xFF] ^ t[1][(r >> 8) & 0xFF] ^ t[2][(r >> 16) & 0xFF] ^ t[3][r >> 24];
  }
};

const ShiftTables& shift_tables() {
  static const ShiftTables tables;
  return tables;
}

__attribute__((target("sse4.2"))) uint32_t raw_hw_one(uint32_t r, const uint8_t* p, size_t n) {
  while (n > 0 && (reinterpret_cast<uintptr_t>(p) & 7u) != 0) {
    r = _mm_crc32_u8(r, *p++);
    --n;
  }
  uint64_t r64 = r;
  while (n >= 8) {
    uint64_t w;
    std::memcpy(&w, p, 8);
    r64 = _mm_crc32_u64(r64, w);
    p += 8;
    n -= 8;
  }
  r = static_cast<uint32_t>(r64);
  while (n-- > 0) r = _mm_crc32_u8(r, *p++);
  return r;
}

__attribute__((target("sse4.2"))) uint32_t raw_hw(uint32_t r, const uint8_t* p, size_t n) {
  if (n >= 3 * kStream) {
    const ShiftTables& shift = shift_tables();
    while (n >= 3 * kStream) {
      // Three independent dependency chains: a continues r, b and c start from 0 and are folded in after.
      uint64_t a = r, b = 0, c = 0;
      const uint8_t* pa = p;
      const uint8_t* pb = p + kStream;
      const uint8_t* pc = p + 2 * kStream;
      for (size_t i = 0; i < kStream; i += 8) {
        uint64_t wa, wb, wc;
        std::memcpy(&wa, pa + i, 8);
        std::memcpy(&wb, pb + i, 8);
        std::memcpy(&wc, pc + i, 8);
        a = _mm_crc32_u64(a, wa);
        b = _mm_crc32_u64(b, wb);
        c = _mm_crc32_u64(c, wc);
      }
      // raw(r, A|B|C) = shift(shift(raw(r, A)) ^ raw(0, B)) ^ raw(0, C), by linearity.
      r = shift.shift(shift.shift(static_cast<uint32_t>(a)) ^ static_cast<uint32_t>(b)) ^ static_cast<uint32_t>(c);
      p += 3 * kStream;
      n -= 3 * kStream;
    }
  }
  return raw_hw_one(r, p, n);
}

bool have_sse42() {
  static const bool yes = __builtin_cpu_supports("sse4.2");
  return yes;
}

#endif

// Polynomials modulo P in the reflected representation: bit 31 is x^0, bit 30 is x^1, ...
// a * b mod P by shift-and-add (b is multiplied by x at each step, reduced when x^32 appears).
uint32_t mul_mod_p(uint32_t a, uint32_t b) {
  uint32_t product = 0;
  for (uint32_t bit = 1u << 31; bit != 0; bit >>= 1) {
    if (a & bit) product ^= b;
    b = (b & 1u) ? (b >> 1) ^ kPoly : b >> 1;
  }
  return product;
}

// x^(8 n) mod P: appending n zero bytes to a message multiplies its raw register by this. Square-and-
// multiply over the bits of n, with x^(8 * 2^k) tabulated.
uint32_t x_pow_8n(uint64_t n) {
  static const std::array<uint32_t, 64> squares = [] {
    std::array<uint32_t, 64> t{};
    t[0] = 1u << 23;  // x^8
    for (size_t k = 1; k < t.size(); ++k) t[k] = mul_mod_p(t[k - 1], t[k - 1]);
    return t;
  }();
  uint32_t result = 1u << 31;  // x^0
  for (size_t k = 0; n != 0; ++k, n >>= 1)
    if (n & 1u) result = mul_mod_p(result, squares[k]);
  return result;
}

}  // namespace

uint32_t crc32c_combine(uint32_t crc_a, uint32_t crc_b, uint64_t len_b) {
  // With pre/post inversion the constant terms cancel: CRC(A|B) = CRC(A) * x^(8|B|) + CRC(B) (mod P).
  return mul_mod_p(crc_a, x_pow_8n(len_b)) ^ crc_b;
}

uint32_t crc32c_extend_portable(uint32_t crc, const void* data, size_t size) {
  return ~raw_portable(~crc, static_cast<const uint8_t*>(data), size);
}

uint32_t crc32c_extend(uint32_t crc, const void* data, size_t size) {
#ifdef MLAFORGE_CRC32C_X86
  if (have_sse42()) return ~raw_hw(~crc, static_cast<const uint8_t*>(data), size);
#endif
  return crc32c_extend_portable(crc, data, size);
}

const char* crc32c_implementation() {
#ifdef MLAFORGE_CRC32C_X86
  if (have_sse42()) return "sse4.2 x3";
#endif
  return "slice-by-8";
}

std::string crc32c_string(uint32_t crc) {
  char buf[24];
  std::snprintf(buf, sizeof(buf), "crc32c:%08x", crc);
  return buf;
}

bool parse_crc32c_string(const std::string& text, uint32_t* crc) {
  const std::string prefix = "crc32c:";
  if (text.size() != prefix.size() + 8 || text.compare(0, prefix.size(), prefix) != 0) return false;
  uint32_t v = 0;
  for (size_t i = prefix.size(); i < text.size(); ++i) {
    const char c = text[i];
    int d;
    if (c >= '0' && c <= '9') d = c - '0';
    else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
    else return false;
    v = (v << 4) | static_cast<uint32_t>(d);
  }
  *crc = v;
  return true;
}

}  // namespace mlaforge

#include "trainer/metrics_png.h"

#include <zlib.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "core/error.h"

namespace mlaforge::metrics {
namespace {

void put_be32(std::string& out, uint32_t value) {
  for (int shift = 24; shift >= 0; shift -= 8) out.push_back(static_cast<char>((value >> shift) & 0xFF));
}

// length | type | data | CRC-32 (the zlib/PNG polynomial) of type + data.
void put_chunk(std::string& out, const char type[4], const std::string& data) {
  put_be32(out, static_cast<uint32_t>(data.size()));
  const size_t type_at = out.size();
  out.append(type, 4);
  out.append(data);
  const auto* covered = reinterpret_cast<const Bytef*>(out.data() + type_at);
  put_be32(out, static_cast<uint32_t>(::crc32(0L, covered, static_cast<uInt>(4 + data.size()))));
}

}  // namespace

std::string encode_png_rgb(int width, int height, const std::vector<uint8_t>& rgb) {
  MLA_CHECK(width > 0 && height > 0 && width <= (1 << 16) && height <= (1 << 16), "PNG size ", width, "x",
            height, " out of range");
  const size_t row_bytes = static_cast<size_t>(width) * 3;
  MLA_CHECK(rgb.size() == row_bytes * static_cast<size_t>(height), "PNG pixel buffer holds ", rgb.size(),
            " bytes, expected ", row_bytes * static_cast<size_t>(height));

  // Raw image data: each row is a filter-type byte (0 = none) followed by its pixels.
  std::string raw;
  raw.reserve((row_bytes + 1) * static_cast<size_t>(height));
  for (int y = 0; y < height; ++y) {
    raw.push_back('\0');
    raw.append(reinterpret_cast<const char*>(rgb.data()) + static_cast<size_t>(y) * row_bytes, row_bytes);
  }
  uLongf packed_size = ::compressBound(static_cast<uLong>(raw.size()));
  std::string packed(packed_size, '\0');
  const int rc = ::compress2(reinterpret_cast<Bytef*>(packed.data()), &packed_size,
                             reinterpret_cast<const Bytef*>(raw.data()), static_cast<uLong>(raw.size()), 6);
  MLA_CHECK(rc == Z_OK, "zlib compress2 failed (", rc, ") encoding a PNG");
  packed.resize(packed_size);

  std::string header;
  put_be32(header, static_cast<uint32_t>(width));
  put_be32(header, static_cast<uint32_t>(height));
  header.push_back(8);     // bit depth
  header.push_back(2);     // colour type: RGB
  header.push_back('\0');  // compression: deflate
  header.push_back('\0');  // filter method: adaptive (per-row filter byte)
  header.push_back('\0');  // no interlace

  std::string png("\x89PNG\r\n\x1a\n", 8);
  put_chunk(png, "IHDR", header);
  put_chunk(png, "IDAT", packed);
  put_chunk(png, "IEND", std::string());
  return png;
}

void write_file_atomically(const std::string& path, const std::string& bytes) {
  const auto parent = std::filesystem::path(path).parent_path();
  std::error_code ec;
  if (!parent.empty()) std::filesystem::create_directories(parent, ec);
  MLA_CHECK(!ec, "cannot create the folder of ", path, ": ", ec.message());
  const std::string tmp = path + ".tmp";
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  MLA_CHECK(f != nullptr, "cannot write ", tmp, ": ", std::strerror(errno));
  const bool ok = std::fwrite(bytes.data(), 1, bytes.size(), f) == bytes.size() && std::fflush(f) == 0;
  const int write_errno = errno;
  std::fclose(f);
  if (!ok) {
    std::remove(tmp.c_str());
    fail("cannot write ", tmp, ": ", std::strerror(write_errno));
  }
  std::filesystem::rename(tmp, path, ec);
  MLA_CHECK(!ec, "cannot replace ", path, ": ", ec.message());
}

}  // namespace mlaforge::metrics

#pragma once
// A minimal PNG encoder for the loss-curve plot: 8-bit RGB, no interlacing, every row with filter 0
// (none), one IDAT chunk deflated by the system zlib. Enough for a chart of flat colours, which
// deflate compresses well without PNG's predictive filters.
#include <cstdint>
#include <string>
#include <vector>

namespace mlaforge::metrics {

// `rgb` holds height rows of width pixels, 3 bytes each, top row first.
std::string encode_png_rgb(int width, int height, const std::vector<uint8_t>& rgb);

// Writes bytes to path through a temporary file and rename() (a reader never sees half a file).
void write_file_atomically(const std::string& path, const std::string& bytes);

}  // namespace mlaforge::metrics

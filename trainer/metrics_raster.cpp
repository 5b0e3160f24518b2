#include "trainer/metrics_raster.h"

#include <algorithm>
#include <array>
#include <cstdlib>

#include "core/error.h"

namespace mlaforge::metrics {
namespace {

// 5x7 glyphs, one string per row, '#' = ink. Drawn by hand for legibility at scale 1-2; lower-case
// letters sit on rows 2-6 (no descenders: 'p' keeps its stem inside the cell).
struct Glyph {
  char c;
  std::array<const char*, 7> rows;
};

constexpr Glyph kFont[] = {
    {'0', {" ### ", "#   #", "#  ##", "# # #", "##  #", "#   #", " ### "}},
    {'1', {"  #  ", " ##  ", "  #  ", "  #  ", "  #  ", "  #  ", " ### "}},
    {'2', {" ### ", "#   #", "    #", "   # ", "  #  ", " #   ", "#####"}},
    {'3', {"#####", "   # ", "  #  ", "   # ", "    #", "#   #", " ### "}},
    {'4', {"   # ", "  ## ", " # # ", "#  # ", "#####", "   # ", "   # "}},
    {'5', {"#####", "#    ", "#### ", "    #", "    #", "#   #", " ### "}},
    {'6', {"  ## ", " #   ", "#    ", "#### ", "#   #", "#   #", " ### "}},
    {'7', {"#####", "    #", "   # ", "  #  ", " #   ", " #   ", " #   "}},
    {'8', {" ### ", "#   #", "#   #", " ### ", "#   #", "#   #", " ### "}},
    {'9', {" ### ", "#   #", "#   #", " ####", "    #", "   # ", " ##  "}},
    {'.', {"     ", "     ", "     ", "     ", "     ", " ##  ", " ##  "}},
    {'-', {"     ", "     ", "     ", " ### ", "     ", "     ", "     "}},
    {'+', {"     ", "  #  ", "  #  ", "#####", "  #  ", "  #  ", "     "}},
    {'(', {"   # ", "  #  ", " #   ", " #   ", " #   ", "  #  ", "   # "}},
    {')', {" #   ", "  #  ", "   # ", "   # ", "   # ", "  #  ", " #   "}},
    {'/', {"    #", "    #", "   # ", "  #  ", " #   ", "#    ", "#    "}},
    {':', {"     ", " ##  ", " ##  ", "     ", " ##  ", " ##  ", "     "}},
    {'%', {"##   ", "##  #", "   # ", "  #  ", " #   ", "#  ##", "   ##"}},
    {' ', {"     ", "     ", "     ", "     ", "     ", "     ", "     "}},
    {'a', {"     ", "     ", " ### ", "    #", " ####", "#   #", " ####"}},
    {'d', {"    #", "    #", " ## #", "#  ##", "#   #", "#   #", " ####"}},
    {'e', {"     ", "     ", " ### ", "#   #", "#####", "#    ", " ### "}},
    {'h', {"#    ", "#    ", "# ## ", "##  #", "#   #", "#   #", "#   #"}},
    {'i', {"  #  ", "     ", " ##  ", "  #  ", "  #  ", "  #  ", " ### "}},
    {'k', {"#    ", "#    ", "#  # ", "# #  ", "##   ", "# #  ", "#  # "}},
    {'l', {" ##  ", "  #  ", "  #  ", "  #  ", "  #  ", "  #  ", " ### "}},
    {'m', {"     ", "     ", "## # ", "# # #", "# # #", "#   #", "#   #"}},
    {'n', {"     ", "     ", "# ## ", "##  #", "#   #", "#   #", "#   #"}},
    {'o', {"     ", "     ", " ### ", "#   #", "#   #", "#   #", " ### "}},
    {'p', {"     ", "     ", "#### ", "#   #", "#### ", "#    ", "#    "}},
    {'r', {"     ", "     ", "# ## ", "##  #", "#    ", "#    ", "#    "}},
    {'s', {"     ", "     ", " ####", "#    ", " ### ", "    #", "#### "}},
    {'t', {" #   ", " #   ", "###  ", " #   ", " #   ", " #  #", "  ## "}},
    {'v', {"     ", "     ", "#   #", "#   #", "#   #", " # # ", "  #  "}},
    {'w', {"     ", "     ", "#   #", "#   #", "# # #", "# # #", " # # "}},
    {'x', {"     ", "     ", "#   #", " # # ", "  #  ", " # # ", "#   #"}},
    {'M', {"#   #", "## ##", "# # #", "# # #", "#   #", "#   #", "#   #"}},
    {'E', {"#####", "#    ", "#    ", "#### ", "#    ", "#    ", "#####"}},
};

const Glyph* find_glyph(char c) {
  for (const Glyph& g : kFont)
    if (g.c == c) return &g;
  return nullptr;
}

constexpr Glyph kMissing = {'?', {"#####", "#   #", "#   #", "#   #", "#   #", "#   #", "#####"}};

}  // namespace

bool font_has_glyph(char c) { return find_glyph(c) != nullptr; }

Canvas::Canvas(int width, int height, Rgb background)
    : width_(width), height_(height), clip_x0_(0), clip_y0_(0), clip_x1_(width - 1), clip_y1_(height - 1) {
  MLA_CHECK(width > 0 && height > 0 && width <= 16384 && height <= 16384, "canvas size ", width, "x", height,
            " out of range");
  rgb_.resize(static_cast<size_t>(width) * static_cast<size_t>(height) * 3);
  for (size_t i = 0; i < rgb_.size(); i += 3) {
    rgb_[i] = background.r;
    rgb_[i + 1] = background.g;
    rgb_[i + 2] = background.b;
  }
}

Rgb Canvas::pixel(int x, int y) const {
  MLA_CHECK(x >= 0 && y >= 0 && x < width_ && y < height_, "pixel (", x, ", ", y, ") outside the canvas");
  const size_t at = (static_cast<size_t>(y) * static_cast<size_t>(width_) + static_cast<size_t>(x)) * 3;
  return {rgb_[at], rgb_[at + 1], rgb_[at + 2]};
}

void Canvas::set_clip(int x0, int y0, int x1, int y1) {
  clip_x0_ = std::max(0, std::min(x0, x1));
  clip_y0_ = std::max(0, std::min(y0, y1));
  clip_x1_ = std::min(width_ - 1, std::max(x0, x1));
  clip_y1_ = std::min(height_ - 1, std::max(y0, y1));
}

void Canvas::reset_clip() { set_clip(0, 0, width_ - 1, height_ - 1); }

void Canvas::set_pixel(int x, int y, Rgb colour) {
  if (x < clip_x0_ || x > clip_x1_ || y < clip_y0_ || y > clip_y1_) return;
  const size_t at = (static_cast<size_t>(y) * static_cast<size_t>(width_) + static_cast<size_t>(x)) * 3;
  rgb_[at] = colour.r;
  rgb_[at + 1] = colour.g;
  rgb_[at + 2] = colour.b;
}

void Canvas::fill_rect(int x0, int y0, int x1, int y1, Rgb colour) {
  const int xa = std::max(std::min(x0, x1), clip_x0_), xb = std::min(std::max(x0, x1), clip_x1_);
  const int ya = std::max(std::min(y0, y1), clip_y0_), yb = std::min(std::max(y0, y1), clip_y1_);
  for (int y = ya; y <= yb; ++y)
    for (int x = xa; x <= xb; ++x) set_pixel(x, y, colour);
}

void Canvas::draw_line(int x0, int y0, int x1, int y1, Rgb colour, int thickness) {
  // Far-off endpoints (a huge loss spike mapped to pixels) would make the walk long: clamp them to a
  // margin around the canvas first. The clamped segment is not exactly the original's direction, but
  // only its part outside the canvas bends, and that part is clipped away.
  const int margin = 4 * (width_ + height_);
  const auto clamp = [margin](int v, int size) { return std::clamp(v, -margin, size + margin); };
  x0 = clamp(x0, width_), x1 = clamp(x1, width_), y0 = clamp(y0, height_), y1 = clamp(y1, height_);
  const int before = (thickness - 1) / 2, after = thickness / 2;
  const int dx = std::abs(x1 - x0), sx = x0 < x1 ? 1 : -1;
  const int dy = -std::abs(y1 - y0), sy = y0 < y1 ? 1 : -1;
  int err = dx + dy;
  for (;;) {
    if (thickness <= 1)
      set_pixel(x0, y0, colour);
    else
      fill_rect(x0 - before, y0 - before, x0 + after, y0 + after, colour);
    if (x0 == x1 && y0 == y1) break;
    const int e2 = 2 * err;
    if (e2 >= dy) {
      err += dy;
      x0 += sx;
    }
    if (e2 <= dx) {
      err += dx;
      y0 += sy;
    }
  }
}

void Canvas::fill_disc(int cx, int cy, int radius, Rgb colour) {
  for (int y = -radius; y <= radius; ++y)
    for (int x = -radius; x <= radius; ++x)
      if (x * x + y * y <= radius * radius + radius) set_pixel(cx + x, cy + y, colour);
}

void Canvas::draw_text(int x, int y, std::string_view text, Rgb colour, int scale) {
  int pen = x;
  for (char c : text) {
    const Glyph* glyph = find_glyph(c);
    if (glyph == nullptr) glyph = &kMissing;
    for (int row = 0; row < 7; ++row)
      for (int col = 0; col < 5; ++col)
        if (glyph->rows[static_cast<size_t>(row)][col] == '#')
          fill_rect(pen + col * scale, y + row * scale, pen + (col + 1) * scale - 1, y + (row + 1) * scale - 1,
                    colour);
    pen += 6 * scale;
  }
}

int Canvas::text_width(std::string_view text, int scale) {
  // The spacing column after the last glyph is not part of the text.
  return text.empty() ? 0 : static_cast<int>(text.size()) * 6 * scale - scale;
}

}  // namespace mlaforge::metrics

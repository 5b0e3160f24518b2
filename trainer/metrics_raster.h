#pragma once
// A tiny RGB raster for the loss-curve plot: solid rectangles, thick lines, filled discs and text in a
// built-in 5x7 bitmap font (digits, '.', '-', '+', 'e', brackets and the lower-case letters our labels
// use). No anti-aliasing: every mark is drawn in its exact colour, so a test can find a curve by colour.
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace mlaforge::metrics {

struct Rgb {
  uint8_t r = 0, g = 0, b = 0;
  friend bool operator==(const Rgb&, const Rgb&) = default;
};

class Canvas {
 public:
  Canvas(int width, int height, Rgb background);

  int width() const { return width_; }
  int height() const { return height_; }
  const std::vector<uint8_t>& rgb() const { return rgb_; }
  Rgb pixel(int x, int y) const;

  // Drawing outside the clip rectangle (initially the whole canvas) is silently dropped.
  void set_clip(int x0, int y0, int x1, int y1);  // inclusive corners
  void reset_clip();

  void set_pixel(int x, int y, Rgb colour);
  void fill_rect(int x0, int y0, int x1, int y1, Rgb colour);  // inclusive corners, any order
  // A line of `thickness` pixels: a square brush stamped along Bresenham's path.
  void draw_line(int x0, int y0, int x1, int y1, Rgb colour, int thickness = 1);
  void fill_disc(int cx, int cy, int radius, Rgb colour);

  // Text with its top-left corner at (x, y); each glyph advances 6 font pixels (5 of ink, 1 of spacing)
  // and is 7 tall, each font pixel `scale` x `scale` canvas pixels. Characters without a glyph draw as a
  // hollow box.
  void draw_text(int x, int y, std::string_view text, Rgb colour, int scale = 1);
  static int text_width(std::string_view text, int scale = 1);
  static int text_height(int scale = 1) { return 7 * scale; }

 private:
  int width_, height_;
  int clip_x0_, clip_y0_, clip_x1_, clip_y1_;
  std::vector<uint8_t> rgb_;  // (height, width, 3), top row first
};

// True when the built-in font has a glyph for c (tests use it to keep labels renderable).
bool font_has_glyph(char c);

}  // namespace mlaforge::metrics

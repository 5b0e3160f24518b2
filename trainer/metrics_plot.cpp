#include "trainer/metrics_plot.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>

#include "core/error.h"
#include "trainer/metrics_png.h"

namespace mlaforge::metrics {
namespace {

constexpr int kTextScale = 2;  // 5x7 glyphs drawn 10x14 pixels

struct Range {
  double lo = std::numeric_limits<double>::infinity();
  double hi = -std::numeric_limits<double>::infinity();
  void add(double v) {
    if (!std::isfinite(v)) return;
    lo = std::min(lo, v);
    hi = std::max(hi, v);
  }
  bool empty() const { return !(lo <= hi); }
};

// Drops the exponent's '+' and leading zeros: "1.5e-05" -> "1.5e-5", "2e+06" -> "2e6".
std::string compact_exponent(std::string text) {
  const size_t e = text.find('e');
  if (e == std::string::npos) return text;
  std::string mantissa = text.substr(0, e), exponent = text.substr(e + 1);
  std::string sign;
  if (!exponent.empty() && (exponent[0] == '+' || exponent[0] == '-')) {
    if (exponent[0] == '-') sign = "-";
    exponent.erase(0, 1);
  }
  exponent.erase(0, std::min(exponent.find_first_not_of('0'), exponent.size() - 1));
  return mantissa + "e" + sign + exponent;
}

// Ticks for an axis `extent_px` long, about one per `px_per_label` pixels, fewer if their labels would
// overlap (side by side on a horizontal axis, stacked on a vertical one).
std::vector<double> fitted_ticks(double lo, double hi, double extent_px, double px_per_label, bool horizontal,
                                 double min_spacing) {
  int target = std::max(2, static_cast<int>(extent_px / px_per_label));
  for (;;) {
    std::vector<double> ticks = nice_ticks(lo, hi, target, min_spacing);
    if (ticks.size() < 2 || target <= 2) return ticks;
    const double spacing = ticks[1] - ticks[0];
    const double gap_px = spacing / (hi - lo) * extent_px;
    int widest = 0;
    for (double t : ticks) widest = std::max(widest, Canvas::text_width(format_tick(t, spacing), kTextScale));
    const double needed = horizontal ? widest + 12 : Canvas::text_height(kTextScale) + 10;
    if (gap_px >= needed) return ticks;
    target = std::max(2, target / 2);
  }
}

}  // namespace

PlotArea plot_area(int width, int height) { return {90, 40, width - 26, height - 56}; }

std::vector<double> nice_ticks(double lo, double hi, int target, double min_spacing) {
  if (!std::isfinite(lo) || !std::isfinite(hi) || hi <= lo) return {};
  const double raw = (hi - lo) / std::max(1, target);
  const double magnitude = std::pow(10.0, std::floor(std::log10(raw)));
  const double norm = raw / magnitude;
  const double nice = norm < 1.5 ? 1 : norm < 3 ? 2 : norm < 7 ? 5 : 10;
  double spacing = std::max(nice * magnitude, min_spacing);
  std::vector<double> ticks;
  // Multiples of the spacing (not a running sum) keep the values round: 0.1 * 3, not 0.1 + 0.1 + 0.1.
  const double first = std::ceil(lo / spacing - 1e-9);
  for (double k = first;; k += 1) {
    double v = k * spacing;
    if (v > hi + 1e-9 * spacing) break;
    if (std::fabs(v) < 1e-12 * spacing) v = 0;  // no "-0"
    ticks.push_back(v);
    if (ticks.size() > 1000) break;  // cannot happen with a sane target; guards a bad min_spacing
  }
  return ticks;
}

std::string format_tick(double value, double spacing) {
  if (value == 0) return "0";
  char buffer[64];
  const double magnitude = std::fabs(value);
  spacing = spacing > 0 ? spacing : magnitude;
  if (magnitude >= 1e6 || magnitude < 1e-4) {
    // Significant digits enough to tell neighbours apart, at most 3 decimals in the mantissa.
    const int decimals = std::clamp(
        static_cast<int>(std::floor(std::log10(magnitude)) - std::floor(std::log10(spacing) + 1e-9)), 0, 3);
    std::snprintf(buffer, sizeof buffer, "%.*e", decimals, value);
    return compact_exponent(buffer);
  }
  const int decimals = std::clamp(static_cast<int>(-std::floor(std::log10(spacing) + 1e-9)), 0, 8);
  std::snprintf(buffer, sizeof buffer, "%.*f", decimals, value);
  return buffer;
}

std::vector<double> ema_smooth(const std::vector<double>& values, double weight) {
  std::vector<double> out;
  out.reserve(values.size());
  double average = 0;
  int64_t count = 0;
  for (double y : values) {
    if (!std::isfinite(y)) {
      out.push_back(std::numeric_limits<double>::quiet_NaN());
      continue;
    }
    average = average * weight + (1 - weight) * y;
    ++count;
    const double debias = weight == 0 ? 1.0 : 1.0 - std::pow(weight, static_cast<double>(count));
    out.push_back(average / debias);
  }
  return out;
}

Canvas render_loss_plot(const LossCurves& curves, int width, int height) {
  MLA_CHECK(width >= 200 && height >= 150, "loss plot size ", width, "x", height, " too small");
  MLA_CHECK(curves.smoothing >= 0 && curves.smoothing < 1, "loss plot smoothing ", curves.smoothing,
            " outside [0, 1)");
  Canvas canvas(width, height, kPlotBackground);
  const PlotArea area = plot_area(width, height);

  std::vector<double> train_values;
  train_values.reserve(curves.train.size());
  for (const auto& point : curves.train) train_values.push_back(point.second);
  const bool smooth = curves.smoothing > 0 && curves.train.size() > 1;
  const std::vector<double> smoothed = smooth ? ema_smooth(train_values, curves.smoothing) : std::vector<double>{};

  Range xs, ys;
  for (const auto& [step, loss] : curves.train)
    if (std::isfinite(loss)) xs.add(static_cast<double>(step)), ys.add(loss);
  for (const auto& [step, loss] : curves.eval)
    if (std::isfinite(loss)) xs.add(static_cast<double>(step)), ys.add(loss);
  const bool has_data = !xs.empty();
  if (!has_data) xs = {0, 1}, ys = {0, 1};
  // Room around the data: dots at the ends stay whole, the curve does not sit on the frame.
  if (xs.hi - xs.lo < 1) xs.lo -= 1, xs.hi += 1;
  const double x_pad = 0.02 * (xs.hi - xs.lo);
  xs.lo -= x_pad, xs.hi += x_pad;
  if (ys.hi - ys.lo < 1e-12 * std::max(1.0, std::fabs(ys.hi))) {
    const double half = std::max(0.5, 0.1 * std::fabs(ys.hi));
    ys.lo -= half, ys.hi += half;
  }
  const double y_pad = 0.05 * (ys.hi - ys.lo);
  ys.lo -= y_pad, ys.hi += y_pad;

  const double area_w = area.x1 - area.x0, area_h = area.y1 - area.y0;
  const auto px = [&](double step) {
    return static_cast<int>(std::lround(area.x0 + (step - xs.lo) / (xs.hi - xs.lo) * area_w));
  };
  const auto py = [&](double loss) {
    const double y = area.y1 - (loss - ys.lo) / (ys.hi - ys.lo) * area_h;
    return static_cast<int>(std::lround(std::clamp(y, -1e6, 1e6)));
  };

  // Grid, ticks and labels.
  const std::vector<double> x_ticks = fitted_ticks(xs.lo, xs.hi, area_w, 110, true, 1);
  const std::vector<double> y_ticks = fitted_ticks(ys.lo, ys.hi, area_h, 60, false, 0);
  const double x_spacing = x_ticks.size() > 1 ? x_ticks[1] - x_ticks[0] : 1;
  const double y_spacing = y_ticks.size() > 1 ? y_ticks[1] - y_ticks[0] : 1;
  const int text_h = Canvas::text_height(kTextScale);
  for (double t : x_ticks) {
    const int x = px(t);
    canvas.fill_rect(x, area.y0, x, area.y1, kPlotGrid);
    canvas.fill_rect(x, area.y1, x, area.y1 + 5, kPlotAxis);
    const std::string label = format_tick(t, x_spacing);
    canvas.draw_text(x - Canvas::text_width(label, kTextScale) / 2, area.y1 + 10, label, kPlotAxis, kTextScale);
  }
  for (double t : y_ticks) {
    const int y = py(t);
    canvas.fill_rect(area.x0, y, area.x1, y, kPlotGrid);
    canvas.fill_rect(area.x0 - 5, y, area.x0, y, kPlotAxis);
    const std::string label = format_tick(t, y_spacing);
    canvas.draw_text(area.x0 - 10 - Canvas::text_width(label, kTextScale), y - text_h / 2, label, kPlotAxis,
                     kTextScale);
  }
  canvas.fill_rect(area.x0, area.y0, area.x0, area.y1, kPlotAxis);  // y axis
  canvas.fill_rect(area.x0, area.y1, area.x1, area.y1, kPlotAxis);  // x axis
  canvas.draw_text(area.x0, 12, "loss", kPlotAxis, kTextScale);
  const int step_w = Canvas::text_width("step", kTextScale);
  canvas.draw_text((area.x0 + area.x1 - step_w) / 2, height - text_h - 6, "step", kPlotAxis, kTextScale);

  // Legend in the top margin, right-aligned, so it never covers data.
  struct Entry {
    const char* label;
    Rgb colour;
    bool dot;
  };
  std::vector<Entry> legend = {{"train", kTrainColour, false}};
  if (smooth) legend.push_back({"smoothed", kSmoothColour, false});
  if (!curves.eval.empty()) legend.push_back({"eval", kEvalColour, true});
  int legend_w = 0;
  for (const Entry& e : legend) legend_w += 28 + Canvas::text_width(e.label, kTextScale) + 18;
  int pen = area.x1 - legend_w + 18;
  const int legend_mid = 12 + text_h / 2;
  for (const Entry& e : legend) {
    if (e.dot)
      canvas.fill_disc(pen + 10, legend_mid, 4, e.colour);
    else
      canvas.draw_line(pen, legend_mid, pen + 20, legend_mid, e.colour, 3);
    canvas.draw_text(pen + 28, 12, e.label, kPlotAxis, kTextScale);
    pen += 28 + Canvas::text_width(e.label, kTextScale) + 18;
  }
  if (!has_data) {
    const int w = Canvas::text_width("no data", kTextScale);
    canvas.draw_text((area.x0 + area.x1 - w) / 2, (area.y0 + area.y1 - text_h) / 2, "no data", kPlotAxis,
                     kTextScale);
    return canvas;
  }

  // Data, clipped to the plot area (the axis lines stay visible).
  canvas.set_clip(area.x0 + 1, area.y0, area.x1, area.y1 - 1);
  const auto polyline = [&](const std::vector<double>& values, Rgb colour, int thickness) {
    bool pen_down = false;
    int last_x = 0, last_y = 0;
    for (size_t i = 0; i < values.size(); ++i) {
      if (!std::isfinite(values[i])) {
        pen_down = false;  // a NaN loss is a gap, not a dive to 0
        continue;
      }
      const int x = px(static_cast<double>(curves.train[i].first)), y = py(values[i]);
      if (pen_down)
        canvas.draw_line(last_x, last_y, x, y, colour, thickness);
      else
        canvas.draw_line(x, y, x, y, colour, thickness);
      pen_down = true, last_x = x, last_y = y;
    }
  };
  polyline(train_values, kTrainColour, smooth ? 1 : 2);
  if (smooth) polyline(smoothed, kSmoothColour, 2);
  for (const auto& [step, loss] : curves.eval)
    if (std::isfinite(loss)) canvas.fill_disc(px(static_cast<double>(step)), py(loss), 4, kEvalColour);
  canvas.reset_clip();
  return canvas;
}

void write_loss_plot_png(const std::string& path, const LossCurves& curves, int width, int height) {
  const Canvas canvas = render_loss_plot(curves, width, height);
  write_file_atomically(path, encode_png_rgb(canvas.width(), canvas.height(), canvas.rgb()));
}

}  // namespace mlaforge::metrics

#pragma once
// The loss-curve picture written at the end of a training run (loss.png, 800x500 RGB): train loss as a
// line, an optional smoothed line (TensorBoard's debiased exponential moving average), eval loss as
// dots, numeric ticks on both axes. Drawn with the raster in metrics_raster.h and saved with the PNG
// encoder in metrics_png.h, so a run leaves a readable picture without Python or TensorBoard.
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "trainer/metrics_raster.h"

namespace mlaforge::metrics {

struct LossCurves {
  std::vector<std::pair<int64_t, double>> train;  // (step, loss); non-finite losses break the line
  std::vector<std::pair<int64_t, double>> eval;
  double smoothing = 0.9;  // EMA weight in [0, 1); 0 draws no smoothed line
};

// Colours of the marks, exact (no anti-aliasing), so a test can find each curve.
inline constexpr Rgb kPlotBackground{255, 255, 255};
inline constexpr Rgb kPlotAxis{40, 40, 40};
inline constexpr Rgb kPlotGrid{226, 226, 226};
inline constexpr Rgb kTrainColour{120, 170, 225};   // light blue: the raw, noisy train loss
inline constexpr Rgb kSmoothColour{20, 70, 150};    // dark blue, drawn over the raw line
inline constexpr Rgb kEvalColour{235, 110, 20};     // orange dots

// Pixel rectangle (inclusive) of the data area for a canvas size; everything outside is axes, labels
// and the legend.
struct PlotArea {
  int x0, y0, x1, y1;
};
PlotArea plot_area(int width, int height);

// Round tick values (1, 2 or 5 times a power of ten apart, at least `min_spacing`) inside [lo, hi],
// about `target` of them.
std::vector<double> nice_ticks(double lo, double hi, int target, double min_spacing = 0);
// A tick label with as many decimals as the spacing needs ("0.5", "2", "1.5e-05" -> "1.5e-5"); only
// characters the built-in font has.
std::string format_tick(double value, double spacing);
// TensorBoard's smoothing: ema = w*ema + (1-w)*y, divided by (1 - w^n) so the start is not pulled to 0.
// Non-finite inputs give NaN and leave the average alone.
std::vector<double> ema_smooth(const std::vector<double>& values, double weight);

Canvas render_loss_plot(const LossCurves& curves, int width = 800, int height = 500);
void write_loss_plot_png(const std::string& path, const LossCurves& curves, int width = 800, int height = 500);

}  // namespace mlaforge::metrics

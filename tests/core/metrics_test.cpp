// Training-run metrics outputs (trainer/metrics_*.cpp): CRC32C and the hand-encoded TensorBoard records
// (bytes pinned against the protobuf library's own serialization), the JSONL file and its resume cut,
// the status line's formatting, and the loss-curve PNG. The event files and the PNG are also read back
// by Python (tests/python/check_tfevents.py with TensorBoard's reader, check_png.py with an independent
// pure-Python PNG decoder); those tests skip when no Python is configured.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"
#include "core/log.h"
#include "tests/support/test_support.h"
#include "trainer/metrics_jsonl.h"
#include "trainer/metrics_log.h"
#include "trainer/metrics_plot.h"
#include "trainer/metrics_png.h"
#include "trainer/metrics_progress.h"
#include "trainer/metrics_tfevents.h"

namespace fs = std::filesystem;
using namespace mlaforge::metrics;
using mlaforge::Error;

namespace {

std::string hex(std::string_view bytes) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  for (unsigned char c : bytes) {
    out.push_back(digits[c >> 4]);
    out.push_back(digits[c & 15]);
  }
  return out;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

void write_text(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
}

uint32_t le32(std::string_view s, size_t at) {
  uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(s[at + static_cast<size_t>(i)]);
  return v;
}

uint32_t be32(std::string_view s, size_t at) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v = (v << 8) | static_cast<unsigned char>(s[at + static_cast<size_t>(i)]);
  return v;
}

struct PythonResult {
  int rc = -1;
  std::string output;
};

// Runs a checker script from tests/python with the configured interpreter; rc 77 means "cannot check".
PythonResult run_checker(const std::string& script, const std::vector<std::string>& args) {
  std::string command = std::string("'") + MLAFORGE_PYTHON + "' '" + mlaforge::testing::source_dir() +
                        "/tests/python/" + script + "'";
  for (const std::string& a : args) command += " '" + a + "'";
  command += " 2>&1";
  PythonResult result;
  std::FILE* pipe = ::popen(command.c_str(), "r");
  if (pipe == nullptr) return result;
  char buffer[4096];
  size_t n;
  while ((n = std::fread(buffer, 1, sizeof buffer, pipe)) > 0) result.output.append(buffer, n);
  const int status = ::pclose(pipe);
  result.rc = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return result;
}

#define REQUIRE_PYTHON()                                                                            \
  do {                                                                                              \
    if (std::string(MLAFORGE_PYTHON).empty())                                                       \
      GTEST_SKIP() << "no Python configured (MLAFORGE_PYTHON is empty): event file/PNG not read back"; \
  } while (0)

#define EXPECT_CHECKER_OK(result)                                                             \
  do {                                                                                        \
    if ((result).rc == 77) GTEST_SKIP() << (result).output;                                   \
    EXPECT_EQ((result).rc, 0) << (result).output;                                             \
  } while (0)

// The loss of the synthetic runs: falls from 3 towards 1.
double synthetic_loss(int64_t step) { return 1.0 + 2.0 * std::exp(-static_cast<double>(step) / 40.0); }

}  // namespace

// --- CRC32C and TFRecord framing ----------------------------------------------------------------------

TEST(MetricsCrc32c, KnownVectors) {
  EXPECT_EQ(crc32c("123456789"), 0xE3069283u);
  EXPECT_EQ(crc32c(""), 0u);
  // RFC 3720 (iSCSI) appendix B.4 vectors.
  EXPECT_EQ(crc32c(std::string(32, '\0')), 0x8A9136AAu);
  EXPECT_EQ(crc32c(std::string(32, '\xff')), 0x62A8AB43u);
  std::string up, down;
  for (int i = 0; i < 32; ++i) up.push_back(static_cast<char>(i)), down.push_back(static_cast<char>(31 - i));
  EXPECT_EQ(crc32c(up), 0x46DD794Eu);
  EXPECT_EQ(crc32c(down), 0x113FDB5Cu);
}

TEST(MetricsCrc32c, ChainsAndMasks) {
  EXPECT_EQ(crc32c("56789", crc32c("1234")), 0xE3069283u);
  // TensorBoard's masked_crc32c(b"123456789").
  EXPECT_EQ(masked_crc32c("123456789"), 0xC78AB0E5u);
}

TEST(MetricsTfEvents, EncodesEventsLikeProtobuf) {
  // Expected bytes: tensorboard.compat.proto.event_pb2.Event(...).SerializeToString() (protobuf 7.36).
  EXPECT_EQ(hex(encode_scalars_event(1700000000.25, 42, {{"train/loss", 2.5f}, {"lr", 0.0f}})),
            "0900001040fc54d941102a2a1e0a110a0a747261696e2f6c6f737315000020400a090a026c721500000000");
  EXPECT_EQ(hex(encode_file_version_event(1700000000.25)), "0900001040fc54d9411a0d627261696e2e4576656e743a32");
  EXPECT_EQ(hex(encode_session_start_event(1700000000.5, 7)), "0900002040fc54d94110073a020801");
  // Two-byte varint step (300), negative float.
  EXPECT_EQ(hex(encode_scalars_event(1.0, 300, {{"x", -1e-3f}})), "09000000000000f03f10ac022a0a0a080a0178156f1283ba");
}

TEST(MetricsTfEvents, FramesRecords) {
  const std::string record = frame_record("abc");
  ASSERT_EQ(record.size(), 8u + 4 + 3 + 4);
  EXPECT_EQ(hex(record.substr(0, 8)), "0300000000000000");
  EXPECT_EQ(le32(record, 8), 0x0E4999B0u);  // masked CRC of the length bytes
  EXPECT_EQ(record.substr(12, 3), "abc");
  EXPECT_EQ(le32(record, 15), 0x21F1576Eu);  // masked CRC of "abc"
}

TEST(MetricsTfEvents, FileNamesNeverClobber) {
  EXPECT_EQ(tfevents_file_name(1700000000.9, "node7", 4242, 0), "events.out.tfevents.1700000000.node7.4242.0");
  const std::string dir = mlaforge::testing::make_temp_dir("tfevents") + "/tb";
  TfEventsWriter a(dir, 1700000000.0);
  TfEventsWriter b(dir, 1700000000.0);
  EXPECT_NE(a.path(), b.path());
  EXPECT_EQ(a.path().substr(a.path().size() - 2), ".0");
  EXPECT_EQ(b.path().substr(b.path().size() - 2), ".1");
  // The version record is there before anything is logged.
  const std::string bytes = read_file(a.path());
  EXPECT_EQ(bytes, frame_record(encode_file_version_event(1700000000.0)));
}

TEST(MetricsTfEvents, TensorBoardReadsOurFile) {
  REQUIRE_PYTHON();
  const std::string dir = mlaforge::testing::make_temp_dir("tfevents-read");
  nlohmann::json expected;
  expected["wall_time_first"] = 1700000000.125;
  expected["events"] = nlohmann::json::array();
  std::string path;
  {
    TfEventsWriter writer(dir, 1700000000.125);
    path = writer.path();
    for (int64_t step : std::vector<int64_t>{1, 2, 3, 127, 128, 100000, 5000000000LL}) {
      const double wall = 1700000000.125 + 0.375 * static_cast<double>(step % 1000);
      // Values that are not float32-exact (0.1, a long fraction), tiny, huge, negative, zero.
      const std::vector<std::pair<std::string, double>> values = {
          {"train/loss", synthetic_loss(step)}, {"train/lr", 0.1 * static_cast<double>(step % 7)},
          {"train/grad_norm", -1.5e-30}, {"train/tokens_per_s", 3.4e38}, {"eval/ppl", 0.0}};
      std::vector<TbScalar> scalars;
      nlohmann::json want_values = nlohmann::json::array();
      for (const auto& [tag, value] : values) {
        scalars.push_back({tag, static_cast<float>(value)});
        want_values.push_back({tag, value});
      }
      writer.add_scalars(step, wall, scalars);
      expected["events"].push_back({{"step", step}, {"wall_time", wall}, {"values", want_values}});
    }
  }
  write_text(dir + "/expected.json", expected.dump());
  const PythonResult result = run_checker("check_tfevents.py", {path, dir + "/expected.json"});
  EXPECT_CHECKER_OK(result);
}

// --- JSONL file --------------------------------------------------------------------------------------

TEST(MetricsJsonl, RoundTripsExactly) {
  MetricRecord record;
  record.split = "eval";
  record.step = 1234567890123;
  record.wall_time = 1717171717.123456789;
  const double nan = std::numeric_limits<double>::quiet_NaN();
  record.values = {{"loss", 2.345678901234567}, {"lr", 3e-4}, {"tiny", 1e-300}, {"neg", -0.5},
                   {"big", 1e20}, {"tokens", 123456}, {"bad", nan}, {"inf", INFINITY}};
  const std::string line = to_json_line(record);
  EXPECT_EQ(line.find('\n'), std::string::npos);
  EXPECT_EQ(line.rfind("{\"split\":\"eval\",\"step\":1234567890123,\"time\":", 0), 0u) << line;
  EXPECT_NE(line.find("\"bad\":null"), std::string::npos) << line;
  const MetricRecord back = parse_json_line(line, "test:1");
  EXPECT_EQ(back.split, "eval");
  EXPECT_EQ(back.step, record.step);
  EXPECT_EQ(back.wall_time, record.wall_time);  // bit-exact
  ASSERT_EQ(back.values.size(), record.values.size());
  for (size_t i = 0; i < 6; ++i) {
    EXPECT_EQ(back.values[i].first, record.values[i].first);
    EXPECT_EQ(back.values[i].second, record.values[i].second) << back.values[i].first;
  }
  EXPECT_TRUE(std::isnan(back.values[6].second));
  EXPECT_TRUE(std::isnan(back.values[7].second));  // +inf is not JSON either: written as null
}

TEST(MetricsJsonl, RejectsMalformedLinesNamingThem) {
  const auto message = [](const std::string& line) {
    try {
      parse_json_line(line, "metrics.jsonl:7");
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_EQ(message("{\"split\":\"train\",\"step\":1"), "metrics.jsonl:7: not valid JSON");
  EXPECT_EQ(message("[1,2]"), "metrics.jsonl:7: expected a JSON object");
  EXPECT_EQ(message("{\"split\":\"train\",\"step\":1.5,\"time\":0}"),
            "metrics.jsonl:7: field \"step\" missing or not an integer");
  EXPECT_EQ(message("{\"split\":\"train\",\"step\":1,\"time\":0,\"loss\":\"x\"}"),
            "metrics.jsonl:7: field \"loss\" is not a number or null");
  EXPECT_EQ(message("{\"step\":1,\"time\":0}"), "metrics.jsonl:7: field \"split\" missing or not a string");
  MetricRecord bad;
  bad.values = {{"step", 1.0}};
  EXPECT_THROW(to_json_line(bad), Error);
}

TEST(MetricsJsonl, ResumeKeepsEarlierLinesByteForByte) {
  const std::string dir = mlaforge::testing::make_temp_dir("jsonl-resume");
  const std::string path = dir + "/metrics.jsonl";
  std::string text;
  std::vector<std::string> lines;
  for (int64_t step = 1; step <= 10; ++step) {
    MetricRecord r{"train", step, 1700000000.0 + static_cast<double>(step), {{"loss", synthetic_loss(step)}}};
    lines.push_back(to_json_line(r));
    if (step % 5 == 0) lines.push_back(to_json_line({"eval", step, 1700000000.5, {{"loss", 2.0}}}));
  }
  for (const std::string& l : lines) text += l + "\n";
  // A run killed mid-write leaves a torn last line.
  write_text(path, text + "{\"split\":\"train\",\"step\":11,\"ti");

  const std::vector<MetricRecord> kept = truncate_jsonl_after(path, 6);
  ASSERT_EQ(kept.size(), 7u);  // train 1-6 and eval 5
  EXPECT_EQ(kept[5].split, "eval");
  EXPECT_EQ(kept[5].step, 5);
  EXPECT_EQ(kept[6].step, 6);
  std::string want;
  for (size_t i = 0; i < 7; ++i) want += lines[i] + "\n";
  EXPECT_EQ(read_file(path), want);
  EXPECT_FALSE(fs::exists(path + ".tmp"));

  // Idempotent, and a missing file is an empty history.
  EXPECT_EQ(truncate_jsonl_after(path, 6).size(), 7u);
  EXPECT_EQ(read_file(path), want);
  EXPECT_TRUE(truncate_jsonl_after(dir + "/absent.jsonl", 3).empty());
  EXPECT_FALSE(fs::exists(dir + "/absent.jsonl"));
}

TEST(MetricsJsonl, LoggerResumeRewritesAndAppends) {
  const std::string dir = mlaforge::testing::make_temp_dir("logger-resume");
  MetricsOptions options = MetricsOptions::in_dir(dir);
  options.plot_path.clear();
  options.progress = ProgressMode::never;
  options.log_every = 1000;
  {
    MetricsLogger first(options);
    for (int64_t step = 1; step <= 10; ++step)
      first.log_train(step, {{"loss", 10.0 - 0.5 * static_cast<double>(step)}}, 1700000000.0 + step);
  }
  options.resume_step = 6;
  {
    MetricsLogger second(options);
    // The kept records seed the plot's curve.
    ASSERT_EQ(second.curves().train.size(), 6u);
    EXPECT_EQ(second.curves().train.back(), (std::pair<int64_t, double>(6, 7.0)));
    for (int64_t step = 7; step <= 12; ++step)
      second.log_train(step, {{"loss", 100.0 + static_cast<double>(step)}}, 1700000100.0 + step);
  }
  const std::vector<MetricRecord> records = read_jsonl(options.jsonl_path);
  ASSERT_EQ(records.size(), 12u);
  for (int64_t i = 0; i < 12; ++i) {
    const int64_t step = i + 1;
    EXPECT_EQ(records[static_cast<size_t>(i)].step, step);
    const double want = step <= 6 ? 10.0 - 0.5 * static_cast<double>(step) : 100.0 + static_cast<double>(step);
    EXPECT_EQ(records[static_cast<size_t>(i)].values.at(0).second, want) << "step " << step;
  }

  // TensorBoard over both runs' files shows the old values up to step 6 and the new ones after.
  if (std::string(MLAFORGE_PYTHON).empty()) GTEST_SKIP() << "no Python configured: TensorBoard view not checked";
  nlohmann::json expected;
  nlohmann::json series = nlohmann::json::array();
  for (int64_t step = 1; step <= 12; ++step)
    series.push_back({step, step <= 6 ? 10.0 - 0.5 * static_cast<double>(step) : 100.0 + static_cast<double>(step)});
  expected["scalars"]["train/loss"] = series;
  write_text(dir + "/expected.json", expected.dump());
  const PythonResult result = run_checker("check_tfevents.py", {"--dir", options.tensorboard_dir, dir + "/expected.json"});
  EXPECT_CHECKER_OK(result);

  // A fresh run in the same folder replaces the history, in the JSONL file and in TensorBoard's view.
  options.resume_step = -1;
  {
    MetricsLogger fresh(options);
    EXPECT_TRUE(fresh.curves().train.empty());
    for (int64_t step = 1; step <= 3; ++step) fresh.log_train(step, {{"loss", 50.0 + static_cast<double>(step)}});
  }
  EXPECT_EQ(read_jsonl(options.jsonl_path).size(), 3u);
  expected["scalars"]["train/loss"] = nlohmann::json::array({{1, 51.0}, {2, 52.0}, {3, 53.0}});
  write_text(dir + "/expected.json", expected.dump());
  const PythonResult fresh_result =
      run_checker("check_tfevents.py", {"--dir", options.tensorboard_dir, dir + "/expected.json"});
  EXPECT_CHECKER_OK(fresh_result);
}

// --- status line ---------------------------------------------------------------------------------------

TEST(MetricsProgress, FormatsDurationsAndUnits) {
  EXPECT_EQ(format_duration(0), "0s");
  EXPECT_EQ(format_duration(59.4), "59s");
  EXPECT_EQ(format_duration(59.6), "1m00s");
  EXPECT_EQ(format_duration(61), "1m01s");
  EXPECT_EQ(format_duration(3725), "1h02m");
  EXPECT_EQ(format_duration(90000), "1d01h");
  EXPECT_EQ(format_duration(std::nan("")), "?");
  EXPECT_EQ(format_duration(-3), "?");
  EXPECT_EQ(format_duration(INFINITY), "?");

  EXPECT_EQ(format_si(0), "0.00");
  EXPECT_EQ(format_si(9.87), "9.87");
  EXPECT_EQ(format_si(950), "950");
  EXPECT_EQ(format_si(999.7), "1.00k");
  EXPECT_EQ(format_si(1234), "1.23k");
  EXPECT_EQ(format_si(12345), "12.3k");
  EXPECT_EQ(format_si(123456), "123k");
  EXPECT_EQ(format_si(1.5e6), "1.50M");
  EXPECT_EQ(format_si(2.5e9), "2.50G");
  EXPECT_EQ(format_si(-4200), "-4.20k");
}

TEST(MetricsProgress, EtaFromThisRunsRate) {
  EXPECT_DOUBLE_EQ(eta_seconds(100, 1000, 0, 50), 450);
  // Resumed at step 500: only the 100 steps done in this run's 20 s count.
  EXPECT_DOUBLE_EQ(eta_seconds(600, 1000, 500, 20), 80);
  EXPECT_EQ(eta_seconds(1000, 1000, 0, 99), 0);
  EXPECT_TRUE(std::isnan(eta_seconds(100, 0, 0, 50)));   // no total
  EXPECT_TRUE(std::isnan(eta_seconds(500, 1000, 500, 0)));  // no progress yet
  EXPECT_TRUE(std::isnan(eta_seconds(1001, 1000, 0, 5)));  // past the total
}

TEST(MetricsProgress, FormatsLineAndDropsFieldsToFit) {
  ProgressFields f;
  f.step = 120;
  f.total = 1000;
  f.loss = 2.34564;
  f.grad_norm = 0.8704;
  f.lr = 3e-4;
  f.tokens_per_s = 12345;
  f.mfu = 0.4123;
  f.mem_gb = 12.34;
  f.eta_s = 3725;
  const std::string full =
      "step 120/1000 (12%) | loss 2.3456 | gnorm 0.87 | lr 3.00e-04 | 12.3k tok/s | MFU 41.2% | mem 12.3G | "
      "ETA 1h02m";
  EXPECT_EQ(format_progress_line(f), full);
  EXPECT_EQ(format_progress_line(f, full.size()), full);
  // Narrower: memory goes first, then MFU, grad norm, lr, throughput.
  EXPECT_EQ(format_progress_line(f, full.size() - 1),
            "step 120/1000 (12%) | loss 2.3456 | gnorm 0.87 | lr 3.00e-04 | 12.3k tok/s | MFU 41.2% | ETA 1h02m");
  EXPECT_EQ(format_progress_line(f, 60), "step 120/1000 (12%) | loss 2.3456 | 12.3k tok/s | ETA 1h02m");
  EXPECT_EQ(format_progress_line(f, 40), "step 120/1000 (12%) | loss 2.3456 | ETA ");
  // Unknown fields are left out; no total shows the bare step.
  ProgressFields bare;
  bare.step = 7;
  bare.loss = 11.0;
  EXPECT_EQ(format_progress_line(bare), "step 7 | loss 11.0000");
}

TEST(MetricsProgress, ParsesMode) {
  EXPECT_EQ(parse_progress_mode("auto"), ProgressMode::automatic);
  EXPECT_EQ(parse_progress_mode("always"), ProgressMode::always);
  EXPECT_EQ(parse_progress_mode("never"), ProgressMode::never);
  EXPECT_THROW(parse_progress_mode("sometimes"), Error);
}

TEST(MetricsLogger, PlainLogLinesEveryNSteps) {
  const std::string dir = mlaforge::testing::make_temp_dir("logger-lines");
  MetricsOptions options;
  options.jsonl_path = dir + "/m.jsonl";
  options.total_steps = 200;
  options.log_every = 50;
  options.progress = ProgressMode::never;
  const auto saved_level = mlaforge::log::level();
  mlaforge::log::set_level(mlaforge::log::Level::info);
  ::testing::internal::CaptureStderr();
  {
    MetricsLogger logger(options);
    EXPECT_FALSE(logger.live());
    for (int64_t step = 1; step <= 200; ++step)
      logger.log_train(step, {{"loss", synthetic_loss(step)}, {"lr", 1e-3}}, 1700000000.0 + 0.5 * step);
    logger.log_eval(200, {{"loss", 1.25}, {"ppl", std::exp(1.25)}}, 1700000100.0);
  }
  const std::string err = ::testing::internal::GetCapturedStderr();
  mlaforge::log::set_level(saved_level);
  // First step, every 50th, and the eval line.
  for (const char* want : {"step 1/200 (0%) | loss 2.9506 | lr 1.00e-03", "step 50/200 (25%) | loss 1.5730",
                           "step 100/200 (50%)", "step 150/200 (75%)", "step 200/200 (100%) | loss 1.0135",
                           "eval step 200: loss 1.2500 | ppl 3.49034"})
    EXPECT_NE(err.find(want), std::string::npos) << want << "\n" << err;
  EXPECT_EQ(err.find("step 2/200"), std::string::npos);
  EXPECT_EQ(err.find("step 51/200"), std::string::npos);
  // ETA from 0.5 s per step: at step 50, 150 steps left -> 75 s.
  EXPECT_NE(err.find("step 50/200 (25%) | loss 1.5730 | lr 1.00e-03 | ETA 1m15s"), std::string::npos) << err;
  EXPECT_EQ(read_jsonl(options.jsonl_path).size(), 201u);
}

// --- plot ---------------------------------------------------------------------------------------------

TEST(MetricsPlot, NiceTicksAndLabels) {
  EXPECT_EQ(nice_ticks(0, 10, 5), (std::vector<double>{0, 2, 4, 6, 8, 10}));
  EXPECT_EQ(nice_ticks(-4, 204, 6), (std::vector<double>{0, 50, 100, 150, 200}));
  const std::vector<double> small = nice_ticks(0.93, 3.07, 6);
  EXPECT_EQ(small.size(), 5u);
  EXPECT_DOUBLE_EQ(small.front(), 1.0);
  EXPECT_DOUBLE_EQ(small.back(), 3.0);
  EXPECT_EQ(nice_ticks(0, 3, 10, 1), (std::vector<double>{0, 1, 2, 3}));  // integer steps only
  EXPECT_TRUE(nice_ticks(1, 1, 5).empty());

  EXPECT_EQ(format_tick(0, 0.5), "0");
  EXPECT_EQ(format_tick(2.5, 0.5), "2.5");
  EXPECT_EQ(format_tick(3, 0.5), "3.0");
  EXPECT_EQ(format_tick(150, 50), "150");
  EXPECT_EQ(format_tick(0.35, 0.05), "0.35");
  EXPECT_EQ(format_tick(1500000, 500000), "1.5e6");
  EXPECT_EQ(format_tick(2e-5, 1e-5), "2e-5");
  EXPECT_EQ(format_tick(-1.2, 0.2), "-1.2");
  for (double v : {0.1, 12.5, -3.0, 1.5e7, 4e-6})
    for (char c : format_tick(v, v / 4)) EXPECT_TRUE(font_has_glyph(c)) << "no glyph for '" << c << "'";
  for (const char* label : {"loss", "step", "train", "smoothed", "eval", "no data"})
    for (const char* c = label; *c; ++c) EXPECT_TRUE(font_has_glyph(*c)) << label;
}

TEST(MetricsPlot, EmaSmoothingIsDebiased) {
  const std::vector<double> s = ema_smooth({4, 2, 0}, 0.5);
  ASSERT_EQ(s.size(), 3u);
  EXPECT_DOUBLE_EQ(s[0], 4.0);          // (0.5*4) / (1 - 0.5)
  EXPECT_DOUBLE_EQ(s[1], 2.0 / 0.75);   // (0.5*2 + 0.5*2) / (1 - 0.25)
  EXPECT_DOUBLE_EQ(s[2], 1.0 / 0.875);  // (0.5*2 + 0) / (1 - 0.125)
  const std::vector<double> gap = ema_smooth({1, std::nan(""), 3}, 0);
  EXPECT_EQ(gap[0], 1);
  EXPECT_TRUE(std::isnan(gap[1]));
  EXPECT_EQ(gap[2], 3);
}

TEST(MetricsPlot, PngChunksAndHeader) {
  const std::vector<uint8_t> rgb = {255, 0, 0, 0, 255, 0, 0, 0, 255, 255, 255, 255};
  const std::string png = encode_png_rgb(2, 2, rgb);
  EXPECT_EQ(hex(png.substr(0, 8)), "89504e470d0a1a0a");
  EXPECT_EQ(be32(png, 8), 13u);
  EXPECT_EQ(png.substr(12, 4), "IHDR");
  EXPECT_EQ(hex(png.substr(16, 13)), "00000002000000020802000000");  // 2x2, depth 8, RGB, no interlace
  EXPECT_EQ(be32(png, 29), 0xFDD49A73u);                              // CRC-32 of "IHDR" + header
  EXPECT_EQ(png.substr(37, 4), "IDAT");
  EXPECT_EQ(hex(png.substr(png.size() - 12)), "0000000049454e44ae426082");  // IEND
  EXPECT_THROW(encode_png_rgb(2, 2, std::vector<uint8_t>(11)), Error);
}

TEST(MetricsPlot, DrawsEachCurveInItsColour) {
  LossCurves curves;
  for (int64_t step = 1; step <= 100; ++step) curves.train.emplace_back(step, synthetic_loss(step));
  curves.train[40].second = std::nan("");  // a gap, not a crash
  curves.eval = {{50, 1.9}, {100, 1.4}};
  const Canvas canvas = render_loss_plot(curves);
  EXPECT_EQ(canvas.width(), 800);
  EXPECT_EQ(canvas.height(), 500);
  const PlotArea area = plot_area(800, 500);
  const auto count = [&](Rgb colour) {
    int n = 0;
    for (int y = area.y0; y <= area.y1; ++y)
      for (int x = area.x0; x <= area.x1; ++x) n += canvas.pixel(x, y) == colour;
    return n;
  };
  EXPECT_GT(count(kTrainColour), 100);
  EXPECT_GT(count(kSmoothColour), 300);
  EXPECT_GT(count(kEvalColour), 2 * 40);  // two discs of radius 4
  // The first train point (highest loss) is near the top-left of the area, the last near the bottom.
  const auto column_has = [&](int x, Rgb a, Rgb b, int y_lo, int y_hi) {
    for (int y = y_lo; y <= y_hi; ++y)
      if (canvas.pixel(x, y) == a || canvas.pixel(x, y) == b) return true;
    return false;
  };
  const int h = area.y1 - area.y0;
  EXPECT_TRUE(column_has(area.x0 + 20, kTrainColour, kSmoothColour, area.y0, area.y0 + h / 4));
  EXPECT_TRUE(column_has(area.x1 - 20, kTrainColour, kSmoothColour, area.y1 - h / 4, area.y1));

  // Nothing to draw still makes a picture (axes and "no data").
  const Canvas empty = render_loss_plot(LossCurves{});
  int ink = 0;
  for (int y = 0; y < 500; ++y)
    for (int x = 0; x < 800; ++x) ink += empty.pixel(x, y) == kPlotAxis;
  EXPECT_GT(ink, 500);
}

TEST(MetricsLogger, EndToEndFilesReadBackByPython) {
  const std::string dir = mlaforge::testing::make_temp_dir("metrics-e2e");
  MetricsOptions options = MetricsOptions::in_dir(dir);
  options.total_steps = 200;
  options.progress = ProgressMode::never;
  options.log_every = 1000;
  // The file starts (after its version record) with a SessionLog START at step 0: a fresh run.
  nlohmann::json events = nlohmann::json::array({{{"step", 0}, {"session_start", true}}});
  std::string tb_file;
  {
    MetricsLogger logger(options);
    tb_file = logger.tensorboard_file();
    for (int64_t step = 1; step <= 200; ++step) {
      const double wall = 1700000000.0 + 0.25 * static_cast<double>(step);
      const Scalars values = {{"loss", synthetic_loss(step)}, {"grad_norm", 1.0 / static_cast<double>(step)},
                              {"lr", 1e-3 * static_cast<double>(step) / 200.0}};
      logger.log_train(step, values, wall);
      nlohmann::json v = nlohmann::json::array();
      for (const auto& [name, value] : values) v.push_back({"train/" + name, value});
      events.push_back({{"step", step}, {"wall_time", wall}, {"values", v}});
      if (step % 50 == 0) {
        const Scalars eval = {{"loss", synthetic_loss(step) + 0.1}};
        logger.log_eval(step, eval, wall + 0.125);
        events.push_back({{"step", step}, {"wall_time", wall + 0.125},
                          {"values", nlohmann::json::array({{"eval/loss", eval[0].second}})}});
      }
    }
  }
  // JSONL: 200 train + 4 eval records, values bit-exact.
  const std::vector<MetricRecord> records = read_jsonl(options.jsonl_path);
  ASSERT_EQ(records.size(), 204u);
  EXPECT_EQ(records[0].values.at(0), (std::pair<std::string, double>("loss", synthetic_loss(1))));
  EXPECT_EQ(records[50].split, "eval");
  EXPECT_EQ(records[50].step, 50);
  ASSERT_TRUE(fs::exists(options.plot_path));
  ASSERT_FALSE(tb_file.empty());

  REQUIRE_PYTHON();
  nlohmann::json expected_events;
  expected_events["events"] = events;
  write_text(dir + "/events.json", expected_events.dump());
  const PythonResult tb = run_checker("check_tfevents.py", {tb_file, dir + "/events.json"});
  EXPECT_CHECKER_OK(tb);

  const PlotArea area = plot_area(800, 500);
  const auto rgb = [](Rgb c) { return nlohmann::json::array({c.r, c.g, c.b}); };
  nlohmann::json expected_png = {{"width", 800},
                                 {"height", 500},
                                 {"area", {area.x0, area.y0, area.x1, area.y1}},
                                 {"decreasing", {rgb(kTrainColour), rgb(kSmoothColour)}},
                                 {"present", {rgb(kEvalColour), rgb(kPlotAxis), rgb(kPlotGrid)}},
                                 {"min_span", 0.8}};
  write_text(dir + "/png.json", expected_png.dump());
  const PythonResult png = run_checker("check_png.py", {options.plot_path, dir + "/png.json"});
  EXPECT_CHECKER_OK(png);
}

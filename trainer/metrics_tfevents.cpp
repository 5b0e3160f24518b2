#include "trainer/metrics_tfevents.h"

#include <unistd.h>

#include <array>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>

#include "core/error.h"

namespace mlaforge::metrics {
namespace {

// 256-entry table for the reflected Castagnoli polynomial, built at compile time.
constexpr std::array<uint32_t, 256> make_crc32c_table() {
  std::array<uint32_t, 256> table{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t crc = i;
    for (int bit = 0; bit < 8; ++bit) crc = (crc & 1u) ? (crc >> 1) ^ 0x82F63B78u : crc >> 1;
    table[i] = crc;
  }
  return table;
}
constexpr std::array<uint32_t, 256> kCrc32cTable = make_crc32c_table();

// --- protobuf wire format: just the pieces an Event needs ------------------------------------------
enum WireType : uint32_t { kVarint = 0, kFixed64 = 1, kLengthDelimited = 2, kFixed32 = 5 };

void put_varint(std::string& out, uint64_t value) {
  while (value >= 0x80) {
    out.push_back(static_cast<char>((value & 0x7F) | 0x80));
    value >>= 7;
  }
  out.push_back(static_cast<char>(value));
}

void put_key(std::string& out, uint32_t field, WireType type) { put_varint(out, (field << 3) | type); }

// Little-endian byte order regardless of the host's, as protobuf and TFRecord both specify.
void put_le(std::string& out, uint64_t bits, int bytes) {
  for (int i = 0; i < bytes; ++i) out.push_back(static_cast<char>((bits >> (8 * i)) & 0xFF));
}

void put_double(std::string& out, uint32_t field, double value) {
  uint64_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  put_key(out, field, kFixed64);
  put_le(out, bits, 8);
}

void put_float(std::string& out, uint32_t field, float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  put_key(out, field, kFixed32);
  put_le(out, bits, 4);
}

void put_bytes(std::string& out, uint32_t field, std::string_view bytes) {
  put_key(out, field, kLengthDelimited);
  put_varint(out, bytes.size());
  out.append(bytes);
}

// Event.wall_time and Event.step, omitted when zero (proto3 default values are not serialized).
std::string event_header(double wall_time, int64_t step) {
  std::string out;
  if (wall_time != 0) put_double(out, 1, wall_time);
  // int64 is a plain varint of the two's-complement value (negative steps take 10 bytes).
  if (step != 0) {
    put_key(out, 2, kVarint);
    put_varint(out, static_cast<uint64_t>(step));
  }
  return out;
}

}  // namespace

uint32_t crc32c(std::string_view data, uint32_t previous) {
  uint32_t crc = ~previous;
  for (unsigned char byte : data) crc = kCrc32cTable[(crc ^ byte) & 0xFFu] ^ (crc >> 8);
  return ~crc;
}

uint32_t masked_crc32c(std::string_view data) {
  const uint32_t crc = crc32c(data);
  return ((crc >> 15) | (crc << 17)) + 0xA282EAD8u;
}

std::string encode_file_version_event(double wall_time) {
  std::string out = event_header(wall_time, 0);
  put_bytes(out, 3, "brain.Event:2");
  return out;
}

std::string encode_scalars_event(double wall_time, int64_t step, const std::vector<TbScalar>& values) {
  std::string summary;
  for (const TbScalar& v : values) {
    std::string value;
    put_bytes(value, 1, v.tag);
    // simple_value sits in a oneof, so it is written even when 0 (presence is what marks it a scalar).
    put_float(value, 2, v.value);
    put_bytes(summary, 1, value);
  }
  std::string out = event_header(wall_time, step);
  put_bytes(out, 5, summary);
  return out;
}

std::string encode_session_start_event(double wall_time, int64_t step) {
  std::string session_log;
  put_key(session_log, 1, kVarint);
  put_varint(session_log, 1);  // SessionLog.START
  std::string out = event_header(wall_time, step);
  put_bytes(out, 7, session_log);
  return out;
}

std::string frame_record(std::string_view data) {
  std::string header;
  put_le(header, data.size(), 8);
  std::string out = header;
  put_le(out, masked_crc32c(header), 4);
  out.append(data);
  put_le(out, masked_crc32c(data), 4);
  return out;
}

std::string tfevents_file_name(double wall_time, const std::string& host, long pid, int index) {
  const long long seconds = static_cast<long long>(std::floor(wall_time));
  return "events.out.tfevents." + std::to_string(seconds) + "." + host + "." + std::to_string(pid) + "." +
         std::to_string(index);
}

TfEventsWriter::TfEventsWriter(const std::string& dir, double wall_time) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  MLA_CHECK(!ec, "cannot create the TensorBoard folder ", dir, ": ", ec.message());
  char host[256] = {};
  if (::gethostname(host, sizeof host - 1) != 0 || host[0] == '\0') std::strcpy(host, "localhost");
  // A slash in a host name would turn the file name into a path.
  for (char* c = host; *c; ++c)
    if (*c == '/') *c = '_';
  for (int index = 0; index < 1000 && file_ == nullptr; ++index) {
    path_ = (std::filesystem::path(dir) / tfevents_file_name(wall_time, host, ::getpid(), index)).string();
    file_ = std::fopen(path_.c_str(), "wbx");  // 'x': never reuse another writer's file
    if (file_ == nullptr && errno != EEXIST)
      fail("cannot create the TensorBoard events file ", path_, ": ", std::strerror(errno));
  }
  MLA_CHECK(file_ != nullptr, "cannot create a TensorBoard events file in ", dir, ": 1000 names taken");
  write_record(encode_file_version_event(wall_time));
}

TfEventsWriter::~TfEventsWriter() {
  if (file_ != nullptr) std::fclose(file_);
}

void TfEventsWriter::add_scalars(int64_t step, double wall_time, const std::vector<TbScalar>& values) {
  write_record(encode_scalars_event(wall_time, step, values));
}

void TfEventsWriter::add_session_start(int64_t step, double wall_time) {
  write_record(encode_session_start_event(wall_time, step));
}

void TfEventsWriter::write_record(const std::string& event) {
  const std::string record = frame_record(event);
  if (std::fwrite(record.data(), 1, record.size(), file_) != record.size() || std::fflush(file_) != 0)
    fail("cannot write the TensorBoard events file ", path_, ": ", std::strerror(errno));
}

}  // namespace mlaforge::metrics

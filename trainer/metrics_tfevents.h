#pragma once
// TensorBoard event files written natively: no TensorFlow, no protobuf library.
//
// An events file is a sequence of TFRecords, each
//   uint64 length (little endian) | uint32 masked_crc32c(length bytes) | data | uint32 masked_crc32c(data)
// whose data is a serialized `tensorboard.Event` protobuf. We only ever write three kinds of Event, so the
// protobuf wire format is encoded by hand (field numbers from tensorboard/compat/proto/event.proto):
//   Event   { double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5;
//             SessionLog session_log = 7; }
//   Summary { repeated Value value = 1; }    Value { string tag = 1; float simple_value = 2; }
//   SessionLog { Status status = 1; }        (START = 1)
// The first record of a file is the version event (file_version "brain.Event:2"); TensorBoard ignores
// files without it.
#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>
#include <vector>

namespace mlaforge::metrics {

// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), table driven. `previous` chains calls:
// crc32c(b, crc32c(a)) == crc32c(a + b).
uint32_t crc32c(std::string_view data, uint32_t previous = 0);
// TFRecord's masking: rotate right by 15 and add a constant, so that a CRC stored next to the data it
// covers does not make the CRC of the whole look degenerate.
uint32_t masked_crc32c(std::string_view data);

struct TbScalar {
  std::string tag;
  float value = 0;
};

// Serialized Event messages, canonical proto3 encoding (zero step omitted, as protobuf itself does).
std::string encode_file_version_event(double wall_time);
std::string encode_scalars_event(double wall_time, int64_t step, const std::vector<TbScalar>& values);
// SessionLog START at `step`: TensorBoard then discards every event of earlier files with step >= step,
// which is how a resumed run hides the steps the previous run logged after its last checkpoint.
std::string encode_session_start_event(double wall_time, int64_t step);

// One TFRecord around `data`.
std::string frame_record(std::string_view data);

// "events.out.tfevents.<seconds>.<host>.<pid>.<index>" (the name TensorFlow and torch writers use).
std::string tfevents_file_name(double wall_time, const std::string& host, long pid, int index);

class TfEventsWriter {
 public:
  // Creates `dir` if needed and a new events file in it named after `wall_time`, this host and pid (the
  // last number is bumped if such a file already exists), then writes the version record.
  TfEventsWriter(const std::string& dir, double wall_time);
  ~TfEventsWriter();
  TfEventsWriter(const TfEventsWriter&) = delete;
  TfEventsWriter& operator=(const TfEventsWriter&) = delete;

  // Each call writes one record and flushes it, so a crashed run keeps everything logged before.
  void add_scalars(int64_t step, double wall_time, const std::vector<TbScalar>& values);
  void add_session_start(int64_t step, double wall_time);
  const std::string& path() const { return path_; }

 private:
  void write_record(const std::string& event);

  std::string path_;
  std::FILE* file_ = nullptr;
};

}  // namespace mlaforge::metrics

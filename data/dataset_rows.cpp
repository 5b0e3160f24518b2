// Row readers for the JSON formats and plain text, and the dispatch by extension (Parquet lives in
// data/parquet_reader.cpp).
#include "data/dataset_rows.h"

#include <fstream>

#include "core/error.h"
#include "core/mmap_file.h"
#include "data/text.h"

namespace mlaforge {
namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

bool is_blank(const std::string& line) {
  for (char c : line)
    if (c != ' ' && c != '\t' && c != '\r') return false;
  return true;
}

// nlohmann's message without its "[json.exception.parse_error.101] " tag; the position it gives is within
// the text parsed (for JSONL, the line).
std::string json_error(const nlohmann::json::exception& e) {
  std::string text = e.what();
  const size_t tag = text.find("] ");
  if (text.rfind("[json.exception.", 0) == 0 && tag != std::string::npos) text.erase(0, tag + 2);
  const std::string first_line = "at line 1, column ";
  const size_t at = text.find(first_line);
  if (at != std::string::npos) text.replace(at, first_line.size(), "at column ");
  return text;
}

// Streams a JSONL file line by line (never the whole file in memory: long-CoT files reach gigabytes).
void read_jsonl_rows(const std::string& path, const RowCallback& fn) {
  MLA_CHECK(!is_directory(path), path, ": is a folder, not a JSONL file");
  std::ifstream in(path, std::ios::binary);
  MLA_CHECK(in.good(), path, ": cannot open");
  std::string line;
  size_t line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    if (line_no == 1 && line.size() >= 3 && line.compare(0, 3, "\xEF\xBB\xBF") == 0) line.erase(0, 3);  // BOM
    if (is_blank(line)) continue;
    nlohmann::json row;
    try {
      row = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception& e) {
      fail(path, ":", line_no, ": malformed JSON: ", json_error(e));
    }
    MLA_CHECK(row.is_object(), path, ":", line_no, ": row is a JSON ", row.type_name(), ", not an object");
    if (!fn(row, path + ":" + std::to_string(line_no))) return;
  }
  MLA_CHECK(!in.bad(), path, ": read error after line ", line_no);
}

// A .json file: one array of row objects, or JSON lines (what `datasets`' Dataset.to_json writes), told
// apart by the first non-space character.
void read_json_rows(const std::string& path, const RowCallback& fn) {
  {
    std::ifstream probe(path, std::ios::binary);
    MLA_CHECK(probe.good(), path, ": cannot open");
    char c = 0;
    while (probe.get(c) && (c == ' ' || c == '\n' || c == '\r' || c == '\t')) {
    }
    if (probe && c == '{') return read_jsonl_rows(path, fn);
  }
  const std::string text = read_text_file(path);
  nlohmann::json doc;
  try {
    doc = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    fail(path, ": malformed JSON: ", json_error(e));
  }
  MLA_CHECK(doc.is_array(), path, ": expected an array of row objects, found a JSON ", doc.type_name());
  for (size_t i = 0; i < doc.size(); ++i) {
    MLA_CHECK(doc[i].is_object(), path, ":[", i, "]: row is a JSON ", doc[i].type_name(), ", not an object");
    if (!fn(doc[i], path + ":[" + std::to_string(i) + "]")) return;
  }
}

void read_text_rows(const std::string& path, const RowCallback& fn) {
  const std::vector<std::string> docs = split_paragraphs(read_text_file(path));
  for (size_t i = 0; i < docs.size(); ++i) {
    nlohmann::json row = nlohmann::json::object();
    row["text"] = docs[i];
    if (!fn(row, path + ":paragraph " + std::to_string(i + 1))) return;
  }
}

}  // namespace

DataFileFormat data_file_format(const std::string& path) {
  if (ends_with(path, ".jsonl")) return DataFileFormat::jsonl;
  if (ends_with(path, ".json")) return DataFileFormat::json;
  if (ends_with(path, ".parquet")) return DataFileFormat::parquet;
  return DataFileFormat::text;
}

void read_rows(const std::string& path, const std::vector<std::string>& columns, const RowCallback& fn) {
  MLA_CHECK(file_exists(path), path, ": no such file");
  switch (data_file_format(path)) {
    case DataFileFormat::jsonl: return read_jsonl_rows(path, fn);
    case DataFileFormat::json: return read_json_rows(path, fn);
    case DataFileFormat::parquet: return read_parquet_rows(path, columns, fn);
    case DataFileFormat::text: return read_text_rows(path, fn);
  }
}

std::vector<std::string> file_columns(const std::string& path) {
  const DataFileFormat format = data_file_format(path);
  if (format == DataFileFormat::parquet) return parquet_columns(path);
  if (format == DataFileFormat::text) return {"text"};
  std::vector<std::string> names;
  read_rows(path, {}, [&](const nlohmann::json& row, const std::string&) {
    for (const auto& item : row.items()) names.push_back(item.key());
    return false;
  });
  return names;
}

}  // namespace mlaforge

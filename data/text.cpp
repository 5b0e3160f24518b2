#include "data/text.h"

#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"
#include "core/mmap_file.h"

namespace mlaforge {
namespace {

bool is_blank(const std::string& line) {
  for (char c : line)
    if (c != ' ' && c != '\t' && c != '\r') return false;
  return true;
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

std::vector<std::string> split_paragraphs(const std::string& text) {
  std::vector<std::string> docs;
  std::string current;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (is_blank(line)) {
      if (!current.empty()) docs.push_back(std::move(current));
      current.clear();
      continue;
    }
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (!current.empty()) current += '\n';
    current += line;
  }
  if (!current.empty()) docs.push_back(std::move(current));
  return docs;
}

std::vector<std::string> read_documents(const std::string& path, const TextReadOptions& options) {
  const std::string text = read_text_file(path);
  std::vector<std::string> docs;
  if (ends_with(path, ".jsonl") || ends_with(path, ".json")) {
    std::istringstream in(text);
    std::string line;
    size_t line_no = 0;
    while (std::getline(in, line)) {
      ++line_no;
      if (is_blank(line)) continue;
      nlohmann::json row;
      try {
        row = nlohmann::json::parse(line);
      } catch (const nlohmann::json::parse_error& e) {
        fail(path, ":", line_no, ": malformed JSON row (", e.what(), ")");
      }
      MLA_CHECK(row.is_object() && row.contains(options.jsonl_field), path, ":", line_no, ": row has no '",
                options.jsonl_field, "' field");
      MLA_CHECK(row[options.jsonl_field].is_string(), path, ":", line_no, ": field '", options.jsonl_field,
                "' is not a string");
      docs.push_back(row[options.jsonl_field].get<std::string>());
      if (options.max_documents && docs.size() >= options.max_documents) break;
    }
  } else {
    docs = split_paragraphs(text);
    if (options.max_documents && docs.size() > options.max_documents) docs.resize(options.max_documents);
  }
  MLA_CHECK(!docs.empty(), path, ": no documents found");
  return docs;
}

}  // namespace mlaforge

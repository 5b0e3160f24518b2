// Schemas: how one row (a JSON object, whatever the file format) becomes an Example. Every problem is
// reported as "<file:row>: field '<path>': <what is wrong>" so a user can find and fix the row.
#include <algorithm>
#include <cctype>

#include "core/error.h"
#include "data/dataset.h"

namespace mlaforge {
namespace {

using nlohmann::json;

const char* const kFormats[] = {"auto", "messages", "sharegpt", "prompt_response", "text"};

bool known_format(const std::string& format) {
  return std::find(std::begin(kFormats), std::end(kFormats), format) != std::end(kFormats);
}

// "code[0]" -> "code", "meta.prompt" -> "meta": the top-level column a path starts in.
std::string root_column(const std::string& path) { return path.substr(0, path.find_first_of(".[")); }

bool has_column(const std::vector<std::string>& columns, const std::string& path) {
  for (const auto& c : columns)
    if (c == path || c == root_column(path)) return true;
  return false;
}

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

[[noreturn]] void bad_field(const std::string& source, const std::string& field, const std::string& what) {
  fail(source, ": field '", field, "': ", what);
}

// The value at `path`, which must be a string: missing, null and other types are malformed. `shown` is
// the field's name in messages when `row` is a nested object (a turn).
std::string required_string(const json& row, const std::string& path, const std::string& source,
                            const std::string& shown = "") {
  const std::string& field = shown.empty() ? path : shown;
  const json* value = find_field(row, path);
  if (value == nullptr) bad_field(source, field, "missing");
  if (!value->is_string()) bad_field(source, field, std::string("expected a string, found ") + value->type_name());
  return value->get<std::string>();
}

// A message's content: a string, or OpenAI-style parts [{type: "text", text: "..."}] concatenated.
std::string content_text(const json& content, const std::string& field, const std::string& source) {
  if (content.is_string()) return content.get<std::string>();
  if (!content.is_array())
    bad_field(source, field, std::string("expected a string or a list of text parts, found ") + content.type_name());
  std::string text;
  for (size_t i = 0; i < content.size(); ++i) {
    const json& part = content[i];
    const std::string where = field + "[" + std::to_string(i) + "]";
    if (!part.is_object() || !part.contains("text") || !part["text"].is_string() ||
        (part.contains("type") && part["type"] != "text"))
      bad_field(source, where, "expected a text part {\"type\": \"text\", \"text\": ...}");
    text += part["text"].get<std::string>();
  }
  return text;
}

// ShareGPT speaker names -> roles (case-insensitive). Empty: unknown.
std::string sharegpt_role(const std::string& from) {
  const std::string f = lower(from);
  if (f == "human" || f == "user") return "user";
  if (f == "gpt" || f == "assistant" || f == "model" || f == "chatgpt" || f == "bing" || f == "bard")
    return "assistant";
  if (f == "system") return "system";
  if (f == "tool" || f == "function" || f == "observation" || f == "ipython") return "tool";
  return "";
}

const json& required_list(const json& row, const std::string& path, const std::string& source) {
  const json* value = find_field(row, path);
  if (value == nullptr) bad_field(source, path, "missing");
  if (!value->is_array()) bad_field(source, path, std::string("expected a list of turns, found ") + value->type_name());
  if (value->empty()) bad_field(source, path, "empty conversation");
  return *value;
}

std::vector<Message> messages_turns(const json& row, const SchemaOptions& options, const std::string& source) {
  const std::string& column = options.messages_column;
  const json& turns = required_list(row, column, source);
  std::vector<Message> messages;
  for (size_t i = 0; i < turns.size(); ++i) {
    const std::string field = column + "[" + std::to_string(i) + "]";
    const json& turn = turns[i];
    if (!turn.is_object()) bad_field(source, field, std::string("expected {role, content}, found ") + turn.type_name());
    Message m;
    m.role = required_string(turn, "role", source, field + ".role");
    if (m.role != "system" && m.role != "user" && m.role != "assistant" && m.role != "tool")
      bad_field(source, field + ".role", "unknown role '" + m.role + "' (expected system, user, assistant or tool)");
    if (!turn.contains("content")) bad_field(source, field + ".content", "missing");
    m.content = content_text(turn["content"], field + ".content", source);
    messages.push_back(std::move(m));
  }
  return messages;
}

std::vector<Message> sharegpt_turns(const json& row, const SchemaOptions& options, const std::string& source) {
  const std::string& column = options.conversations_column;
  const json& turns = required_list(row, column, source);
  std::vector<Message> messages;
  if (!options.system_column.empty()) {
    const json* system = find_field(row, options.system_column);
    if (system != nullptr && !system->is_null()) {
      if (!system->is_string())
        bad_field(source, options.system_column, std::string("expected a string, found ") + system->type_name());
      if (!system->get<std::string>().empty()) messages.push_back({"system", system->get<std::string>()});
    }
  }
  for (size_t i = 0; i < turns.size(); ++i) {
    const std::string field = column + "[" + std::to_string(i) + "]";
    const json& turn = turns[i];
    if (!turn.is_object()) bad_field(source, field, std::string("expected {from, value}, found ") + turn.type_name());
    const std::string from = required_string(turn, "from", source, field + ".from");
    Message m;
    m.role = sharegpt_role(from);
    if (m.role.empty())
      bad_field(source, field + ".from",
                "unknown speaker '" + from + "' (expected human/user, gpt/assistant, system or tool)");
    const json* value = find_field(turn, "value");
    if (value == nullptr) bad_field(source, field + ".value", "missing");
    m.content = content_text(*value, field + ".value", source);
    messages.push_back(std::move(m));
  }
  return messages;
}

}  // namespace

const json* find_field(const json& row, const std::string& path) {
  if (row.is_object()) {  // a column literally named "a.b" wins over the path a -> b
    auto it = row.find(path);
    if (it != row.end()) return &*it;
  }
  const json* node = &row;
  size_t i = 0;
  MLA_CHECK(!path.empty(), "empty field path");
  while (i < path.size()) {
    const size_t end = path.find_first_of(".[", i);
    const std::string name = path.substr(i, end == std::string::npos ? std::string::npos : end - i);
    MLA_CHECK(!name.empty(), "bad field path '", path,
              "' (expected names separated by '.', each optionally followed by [index])");
    if (!node->is_object()) return nullptr;
    auto it = node->find(name);
    if (it == node->end()) return nullptr;
    node = &*it;
    i = end == std::string::npos ? path.size() : end;
    while (i < path.size() && path[i] == '[') {
      const size_t close = path.find(']', i);
      MLA_CHECK(close != std::string::npos && close > i + 1, "bad field path '", path, "' (unclosed [)");
      const std::string digits = path.substr(i + 1, close - i - 1);
      MLA_CHECK(std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; }),
                "bad field path '", path, "' (index '", digits, "' is not a number)");
      if (!node->is_array()) return nullptr;
      const size_t index = std::stoul(digits);
      if (index >= node->size()) return nullptr;
      node = &(*node)[index];
      i = close + 1;
    }
    if (i < path.size()) {
      MLA_CHECK(path[i] == '.' && i + 1 < path.size(), "bad field path '", path, "'");
      ++i;
    }
  }
  return node;
}

std::string detect_schema(const std::vector<std::string>& columns, const SchemaOptions& options,
                          const std::string& file) {
  MLA_CHECK(known_format(options.format), "unknown dataset format '", options.format,
            "' (expected auto, messages, sharegpt, prompt_response or text)");
  if (options.format != "auto") return options.format;
  if (has_column(columns, options.messages_column)) return "messages";
  if (has_column(columns, options.conversations_column)) return "sharegpt";
  if (has_column(columns, options.prompt_column) && has_column(columns, options.response_column))
    return "prompt_response";
  if (has_column(columns, options.text_column)) return "text";
  std::string present;
  for (const auto& c : columns) present += (present.empty() ? "'" : ", '") + c + "'";
  fail(file, ": cannot tell the dataset schema from its columns (", present.empty() ? "none" : present,
       "): expected '", options.messages_column, "' (messages), '", options.conversations_column, "' (sharegpt), '",
       options.prompt_column, "' + '", options.response_column, "' (prompt_response) or '", options.text_column,
       "' (text); set the format and column names");
}

std::vector<std::string> schema_columns(const std::string& format, const SchemaOptions& options) {
  std::vector<std::string> paths;
  if (format == "messages") paths = {options.messages_column};
  if (format == "sharegpt") paths = {options.conversations_column, options.system_column};
  if (format == "prompt_response") paths = {options.prompt_column, options.response_column};
  if (format == "text") paths = {options.text_column};
  std::vector<std::string> columns;
  for (const auto& p : paths) {  // both the literal name and the path's root (see find_field)
    for (const std::string& c : {p, root_column(p)})
      if (!c.empty() && std::find(columns.begin(), columns.end(), c) == columns.end()) columns.push_back(c);
  }
  return columns;
}

Example row_to_example(const json& row, const std::string& format, const SchemaOptions& options,
                       const std::string& source) {
  Example example;
  example.source = source;
  if (format == "text") {
    example.is_text = true;
    example.text = required_string(row, options.text_column, source);
    if (example.text.empty()) bad_field(source, options.text_column, "empty text");
    return example;
  }
  std::string turns_field;
  if (format == "messages") {
    example.messages = messages_turns(row, options, source);
    turns_field = options.messages_column;
  } else if (format == "sharegpt") {
    example.messages = sharegpt_turns(row, options, source);
    turns_field = options.conversations_column;
  } else if (format == "prompt_response") {
    example.messages.push_back({"user", required_string(row, options.prompt_column, source)});
    example.messages.push_back({"assistant", required_string(row, options.response_column, source)});
    turns_field = options.response_column;
  } else {
    fail("row_to_example: format '", format, "' is not a concrete schema (messages, sharegpt, prompt_response, text)");
  }
  const bool has_system = std::any_of(example.messages.begin(), example.messages.end(),
                                      [](const Message& m) { return m.role == "system"; });
  if (!options.system_prompt.empty() && !has_system)
    example.messages.insert(example.messages.begin(), Message{"system", options.system_prompt});
  if (options.require_assistant_last && example.messages.back().role != "assistant")
    bad_field(source, turns_field, "the last turn is '" + example.messages.back().role +
                                       "', not 'assistant' (nothing to learn from)");
  return example;
}

}  // namespace mlaforge

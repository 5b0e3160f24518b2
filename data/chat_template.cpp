#include "data/chat_template.h"

#include <algorithm>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/log.h"
#include "core/mmap_file.h"

namespace mlaforge {

namespace {

constexpr std::string_view kThinkOpen = "<think>";
constexpr std::string_view kThinkClose = "</think>";
constexpr std::string_view kQwen25System = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.";

// ------------------------------------------------------------------------------------------ text --
// Decodes the code point starting at s[i] (or ending just before s[end] when backwards). Invalid UTF-8
// decodes as a single non-space byte, which is all stripping needs.
uint32_t decode_at(std::string_view s, size_t i, size_t* len) {
  const auto b = static_cast<unsigned char>(s[i]);
  int n = b < 0x80 ? 1 : (b >> 5) == 0x6 ? 2 : (b >> 4) == 0xE ? 3 : (b >> 3) == 0x1E ? 4 : 0;
  if (n == 0 || i + n > s.size()) {
    *len = 1;
    return 0xFFFFFFFF;
  }
  uint32_t cp = n == 1 ? b : n == 2 ? (b & 0x1F) : n == 3 ? (b & 0x0F) : (b & 0x07);
  for (int k = 1; k < n; ++k) {
    const auto c = static_cast<unsigned char>(s[i + k]);
    if ((c >> 6) != 0x2) {
      *len = 1;
      return 0xFFFFFFFF;
    }
    cp = (cp << 6) | (c & 0x3F);
  }
  *len = static_cast<size_t>(n);
  return cp;
}

// Exactly the code points for which Python's str.isspace() is true (checked against CPython 3.11).
bool is_python_space(uint32_t cp) {
  if (cp == 0x20 || (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x1F)) return true;
  if (cp < 0x80) return false;
  return cp == 0x85 || cp == 0xA0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 ||
         cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

std::string_view lstrip_char(std::string_view s, char c) {
  while (!s.empty() && s.front() == c) s.remove_prefix(1);
  return s;
}
std::string_view rstrip_char(std::string_view s, char c) {
  while (!s.empty() && s.back() == c) s.remove_suffix(1);
  return s;
}

bool contains(std::string_view s, std::string_view what) { return s.find(what) != std::string_view::npos; }

// Python's content.split(sep)[-1] and [0].
std::string_view after_last(std::string_view s, std::string_view sep) {
  const size_t p = s.rfind(sep);
  return p == std::string_view::npos ? s : s.substr(p + sep.size());
}
std::string_view before_first(std::string_view s, std::string_view sep) {
  const size_t p = s.find(sep);
  return p == std::string_view::npos ? s : s.substr(0, p);
}

// Index of the last user message, or n - 1 when there is none (Qwen3's `last_query_index` start value,
// which makes every assistant turn "history"). Qwen3 does not count user turns that only wrap a tool
// response; no other template has such turns, so one rule serves all.
int64_t last_query_index(const std::vector<Message>& messages) {
  for (int64_t i = static_cast<int64_t>(messages.size()) - 1; i >= 0; --i) {
    const std::string& c = messages[i].content;
    const bool tool_wrap = c.rfind("<tool_response>", 0) == 0 && c.size() >= 16 &&
                           std::string_view(c).substr(c.size() - 16) == "</tool_response>";
    if (messages[i].role == "user" && !tool_wrap) return i;
  }
  return static_cast<int64_t>(messages.size()) - 1;
}

// An assistant message's text under a think policy, for every template but qwen3 (which re-formats the
// reasoning itself). Stripping keeps what follows the last </think>: verbatim for DeepSeek (its official
// template's content.split('</think>')[-1]), without leading newlines for the others.
std::string apply_think(std::string_view content, ThinkPolicy policy, bool history, ChatFormat format) {
  const bool strip = policy == ThinkPolicy::strip_all || (policy == ThinkPolicy::strip_history && history);
  if (!strip || !contains(content, kThinkClose)) return std::string(content);
  std::string_view rest = after_last(content, kThinkClose);
  if (format != ChatFormat::deepseek_r1) rest = lstrip_char(rest, '\n');
  return std::string(rest);
}

// Collects segments; drops empty text; decides `trained`.
class SegmentWriter {
 public:
  explicit SegmentWriter(const ChatRenderOptions& options) : options_(options) {}
  void add(std::string text, const std::string& role, SegmentKind kind, int64_t message) {
    if (text.empty()) return;
    ChatSegment s;
    s.text = std::move(text);
    s.role = role;
    s.kind = kind;
    s.message = static_cast<int32_t>(message);
    s.trained = (kind == SegmentKind::content || kind == SegmentKind::end) &&
                std::find(options_.trained_roles.begin(), options_.trained_roles.end(), role) !=
                    options_.trained_roles.end();
    segments_.push_back(std::move(s));
  }
  std::vector<ChatSegment> take() { return std::move(segments_); }

 private:
  const ChatRenderOptions& options_;
  std::vector<ChatSegment> segments_;
};

std::string where(std::string_view source, size_t message) {
  std::string w = source.empty() ? std::string("conversation") : std::string(source);
  return w + ": message " + std::to_string(message);
}

// gemma and mistral: after an optional leading system message, user/assistant strictly alternating.
void check_alternation(const std::vector<Message>& messages, std::string_view source, const std::string& name) {
  size_t start = !messages.empty() && messages[0].role == "system" ? 1 : 0;
  for (size_t i = start; i < messages.size(); ++i) {
    const std::string& role = messages[i].role;
    if (role == "system")
      fail(where(source, i), ": template ", name, " supports one system message, and only as the first message");
    if (role != "user" && role != "assistant")
      fail(where(source, i), ": template ", name, " has no '", role, "' role (only system, user, assistant)");
    const bool want_user = (i - start) % 2 == 0;
    if ((role == "user") != want_user)
      fail(where(source, i), ": template ", name,
           " needs the roles to alternate user/assistant/user/... after the optional system message (found '", role,
           "')");
  }
}

// ------------------------------------------------------------------------------------- renderers --
void render_chatml(const ChatTemplate& t, const std::vector<Message>& m, ThinkPolicy think, SegmentWriter& w) {
  const bool qwen_tools = t.format() != ChatFormat::chatml;
  if ((m.empty() || m[0].role != "system") && !t.default_system().empty()) {
    w.add("<|im_start|>system\n", "system", SegmentKind::header, -1);
    w.add(t.default_system(), "system", SegmentKind::content, -1);
    w.add("<|im_end|>", "system", SegmentKind::end, -1);
    w.add("\n", "system", SegmentKind::separator, -1);
  }
  const int64_t last_query = last_query_index(m);
  for (size_t i = 0; i < m.size(); ++i) {
    const std::string& role = m[i].role;
    if (role == "tool" && qwen_tools) {
      // Qwen: consecutive tool results share one user turn.
      if (i == 0 || m[i - 1].role != "tool") w.add("<|im_start|>user", role, SegmentKind::header, i);
      w.add("\n<tool_response>\n" + m[i].content + "\n</tool_response>", role, SegmentKind::content, i);
      if (i + 1 == m.size() || m[i + 1].role != "tool") {
        w.add("<|im_end|>", role, SegmentKind::end, i);
        w.add("\n", role, SegmentKind::separator, i);
      }
      continue;
    }
    w.add("<|im_start|>" + role + "\n", role, SegmentKind::header, i);
    if (role == "assistant")
      w.add(apply_think(m[i].content, think, static_cast<int64_t>(i) < last_query, t.format()), role,
            SegmentKind::content, i);
    else
      w.add(m[i].content, role, SegmentKind::content, i);
    w.add("<|im_end|>", role, SegmentKind::end, i);
    w.add("\n", role, SegmentKind::separator, i);
  }
}

// Qwen3's template, assistant branch included: reasoning comes from the content's <think> block and is
// re-written as <think>\n{r}\n</think>\n\n for turns after the last user query that have reasoning, and
// always for the very last message.
void render_qwen3(const std::vector<Message>& m, ThinkPolicy think, SegmentWriter& w) {
  const int64_t last_query = last_query_index(m);
  for (size_t i = 0; i < m.size(); ++i) {
    const std::string& role = m[i].role;
    const std::string_view c = m[i].content;
    if (role == "tool") {
      if (i == 0 || m[i - 1].role != "tool") w.add("<|im_start|>user", role, SegmentKind::header, i);
      w.add("\n<tool_response>\n" + m[i].content + "\n</tool_response>", role, SegmentKind::content, i);
      if (i + 1 == m.size() || m[i + 1].role != "tool") {
        w.add("<|im_end|>", role, SegmentKind::end, i);
        w.add("\n", role, SegmentKind::separator, i);
      }
      continue;
    }
    w.add("<|im_start|>" + role + "\n", role, SegmentKind::header, i);
    if (role != "assistant") {
      w.add(m[i].content, role, SegmentKind::content, i);
    } else {
      std::string_view reasoning, content = c;
      if (contains(c, kThinkClose)) {
        reasoning = lstrip_char(after_last(rstrip_char(before_first(c, kThinkClose), '\n'), kThinkOpen), '\n');
        content = lstrip_char(after_last(c, kThinkClose), '\n');
      }
      const bool after_query = static_cast<int64_t>(i) > last_query;
      const bool keep = think == ThinkPolicy::keep_all || (think == ThinkPolicy::strip_history && after_query);
      if (!keep) reasoning = {};
      const bool last = i + 1 == m.size();
      // keep_all renders earlier turns the way Qwen3 renders turns after the last query.
      const bool block = (after_query || think == ThinkPolicy::keep_all) && (last || !reasoning.empty());
      if (block)
        w.add(std::string("<think>\n") + std::string(lstrip_char(rstrip_char(reasoning, '\n'), '\n')) +
                  "\n</think>\n\n" + std::string(lstrip_char(content, '\n')),
              role, SegmentKind::content, i);
      else
        w.add(std::string(content), role, SegmentKind::content, i);
    }
    w.add("<|im_end|>", role, SegmentKind::end, i);
    w.add("\n", role, SegmentKind::separator, i);
  }
}

void render_llama3(const std::vector<Message>& m, ThinkPolicy think, SegmentWriter& w) {
  w.add("<|begin_of_text|>", "", SegmentKind::bos, -1);
  const int64_t last_query = last_query_index(m);
  for (size_t i = 0; i < m.size(); ++i) {
    const std::string& role = m[i].role;
    w.add("<|start_header_id|>" + role + "<|end_header_id|>\n\n", role, SegmentKind::header, i);
    const std::string content = role == "assistant"
                                    ? apply_think(m[i].content, think, static_cast<int64_t>(i) < last_query,
                                                  ChatFormat::llama3)
                                    : m[i].content;
    w.add(python_strip(content), role, SegmentKind::content, i);
    w.add("<|eot_id|>", role, SegmentKind::end, i);
  }
}

void render_mistral(const std::vector<Message>& m, ThinkPolicy think, SegmentWriter& w, std::string_view source) {
  check_alternation(m, source, "mistral");
  const bool has_system = !m.empty() && m[0].role == "system";
  const int64_t last_query = last_query_index(m);
  w.add("<s>", "", SegmentKind::bos, -1);
  for (size_t i = has_system ? 1 : 0; i < m.size(); ++i) {
    const std::string& role = m[i].role;
    if (role == "user") {
      w.add("[INST] ", role, SegmentKind::header, i);
      if (has_system && static_cast<int64_t>(i) == last_query)
        w.add(m[0].content + "\n\n", "system", SegmentKind::content, 0);
      w.add(m[i].content, role, SegmentKind::content, i);
      w.add("[/INST]", role, SegmentKind::end, i);
    } else {
      // Built by append: GCC 12 warns falsely (-Wrestrict) on " " + std::string&&.
      std::string answer(" ");
      const bool history = static_cast<int64_t>(i) < last_query;
      answer += python_strip(apply_think(m[i].content, think, history, ChatFormat::mistral));
      w.add(std::move(answer), role, SegmentKind::content, i);
      w.add("</s>", role, SegmentKind::end, i);
    }
  }
}

void render_deepseek(const std::vector<Message>& m, ThinkPolicy think, SegmentWriter& w, std::string_view source) {
  w.add("<｜begin▁of▁sentence｜>", "", SegmentKind::bos, -1);
  bool first_system = true;
  for (size_t i = 0; i < m.size(); ++i) {
    if (m[i].role != "system") continue;
    w.add(first_system ? m[i].content : "\n\n" + m[i].content, "system", SegmentKind::content, i);
    first_system = false;
  }
  const int64_t last_query = last_query_index(m);
  for (size_t i = 0; i < m.size(); ++i) {
    const std::string& role = m[i].role;
    if (role == "system") continue;
    if (role == "user") {
      w.add("<｜User｜>", role, SegmentKind::header, i);
      w.add(m[i].content, role, SegmentKind::content, i);
    } else if (role == "assistant") {
      w.add("<｜Assistant｜>", role, SegmentKind::header, i);
      w.add(apply_think(m[i].content, think, static_cast<int64_t>(i) < last_query, ChatFormat::deepseek_r1), role,
            SegmentKind::content, i);
      w.add("<｜end▁of▁sentence｜>", role, SegmentKind::end, i);
    } else {
      fail(where(source, i), ": template deepseek_r1 has no '", role,
           "' role here (only system, user, assistant; tool calls are not rendered)");
    }
  }
}

void render_gemma(const std::vector<Message>& m, ThinkPolicy think, SegmentWriter& w, std::string_view source) {
  check_alternation(m, source, "gemma");
  const bool has_system = !m.empty() && m[0].role == "system";
  const int64_t last_query = last_query_index(m);
  w.add("<bos>", "", SegmentKind::bos, -1);
  const size_t first = has_system ? 1 : 0;
  for (size_t i = first; i < m.size(); ++i) {
    const std::string& role = m[i].role;
    w.add("<start_of_turn>" + std::string(role == "assistant" ? "model" : role) + "\n", role, SegmentKind::header, i);
    if (i == first && has_system) w.add(m[0].content + "\n\n", "system", SegmentKind::content, 0);
    const std::string content = role == "assistant"
                                    ? apply_think(m[i].content, think, static_cast<int64_t>(i) < last_query,
                                                  ChatFormat::gemma)
                                    : m[i].content;
    w.add(python_strip(content), role, SegmentKind::content, i);
    w.add("<end_of_turn>", role, SegmentKind::end, i);
    w.add("\n", role, SegmentKind::separator, i);
  }
}

struct BuiltinInfo {
  const char* name;
  ChatFormat format;
};
constexpr BuiltinInfo kBuiltins[] = {
    {"chatml", ChatFormat::chatml}, {"qwen2", ChatFormat::qwen2},   {"qwen3", ChatFormat::qwen3},
    {"llama3", ChatFormat::llama3}, {"mistral", ChatFormat::mistral}, {"deepseek_r1", ChatFormat::deepseek_r1},
    {"gemma", ChatFormat::gemma},
};

std::string joined_names() {
  std::string out;
  for (const auto& b : kBuiltins) out += (out.empty() ? "" : ", ") + std::string(b.name);
  return out;
}

// The literal default system prompt of a ChatML template: '<|im_start|>system\n' directly followed by
// text up to '<|im_end|>' inside one quoted Jinja string (no expression in between). "" when none.
std::string literal_default_system(const std::string& src) {
  // The newline after "system" is usually the escape \n inside the Jinja string, rarely a real newline.
  for (const std::string open : {"<|im_start|>system\\n", "<|im_start|>system\n"}) {
    for (size_t pos = src.find(open); pos != std::string::npos; pos = src.find(open, pos + 1)) {
      const size_t start = pos + open.size();
      const size_t stop = src.find("<|im_end|>", start);
      if (stop == std::string::npos) break;
      const std::string_view body(src.data() + start, stop - start);
      if (body.empty() || body.find_first_of("'\"{}+") != std::string_view::npos) continue;
      std::string out;  // undo the Jinja string escapes a prompt may use
      for (size_t i = 0; i < body.size(); ++i) {
        if (body[i] == '\\' && i + 1 < body.size()) {
          const char e = body[++i];
          out.push_back(e == 'n' ? '\n' : e == 't' ? '\t' : e);
        } else {
          out.push_back(body[i]);
        }
      }
      return out;
    }
  }
  return {};
}

}  // namespace

// ------------------------------------------------------------------------------------ public API --
std::string python_strip(std::string_view text) {
  size_t begin = 0, end = text.size();
  while (begin < end) {
    size_t len;
    const uint32_t cp = decode_at(text, begin, &len);
    if (!is_python_space(cp)) break;
    begin += len;
  }
  while (end > begin) {
    size_t start = end - 1;  // back up to the lead byte of the last code point
    while (start > begin && (static_cast<unsigned char>(text[start]) & 0xC0) == 0x80 && end - start < 4) --start;
    size_t len;
    const uint32_t cp = decode_at(text, start, &len);
    if (start + len != end || !is_python_space(cp)) break;
    end = start;
  }
  return std::string(text.substr(begin, end - begin));
}

std::string_view think_policy_name(ThinkPolicy policy) {
  switch (policy) {
    case ThinkPolicy::keep_all: return "keep_all";
    case ThinkPolicy::strip_history: return "strip_history";
    case ThinkPolicy::strip_all: return "strip_all";
  }
  return "?";
}

ThinkPolicy parse_think_policy(std::string_view name) {
  if (name == "keep_all") return ThinkPolicy::keep_all;
  if (name == "strip_history") return ThinkPolicy::strip_history;
  if (name == "strip_all") return ThinkPolicy::strip_all;
  fail("unknown think policy '", name, "' (expected keep_all, strip_history or strip_all)");
}

std::string_view segment_kind_name(SegmentKind kind) {
  switch (kind) {
    case SegmentKind::bos: return "bos";
    case SegmentKind::header: return "header";
    case SegmentKind::content: return "content";
    case SegmentKind::end: return "end";
    case SegmentKind::separator: return "separator";
    case SegmentKind::generation_prompt: return "generation_prompt";
  }
  return "?";
}

ChatTemplate::ChatTemplate(ChatFormat format, std::string name, std::string default_system)
    : format_(format), name_(std::move(name)), default_system_(std::move(default_system)) {}

ChatTemplate ChatTemplate::builtin(std::string_view name) {
  for (const auto& b : kBuiltins)
    if (name == b.name)
      return ChatTemplate(b.format, b.name, b.format == ChatFormat::qwen2 ? std::string(kQwen25System) : "");
  fail("unknown chat template '", name, "' (built-in templates: ", joined_names(), ")");
}

std::vector<std::string> ChatTemplate::builtin_names() {
  std::vector<std::string> out;
  for (const auto& b : kBuiltins) out.emplace_back(b.name);
  return out;
}

ThinkPolicy ChatTemplate::default_think_policy() const {
  return format_ == ChatFormat::deepseek_r1 || format_ == ChatFormat::qwen3 ? ThinkPolicy::strip_history
                                                                            : ThinkPolicy::keep_all;
}

std::string ChatTemplate::describe() const {
  std::string out = name_;
  if (!default_system_.empty()) out += " (default system prompt: \"" + default_system_ + "\")";
  return out;
}

std::vector<std::string> ChatTemplate::required_tokens() const {
  switch (format_) {
    case ChatFormat::chatml:
    case ChatFormat::qwen2:
    case ChatFormat::qwen3: return {"<|im_start|>", "<|im_end|>"};
    case ChatFormat::llama3: return {"<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"};
    case ChatFormat::mistral: return {"<s>", "</s>"};
    case ChatFormat::deepseek_r1:
      return {"<｜begin▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>", "<｜end▁of▁sentence｜>"};
    case ChatFormat::gemma: return {"<bos>", "<start_of_turn>", "<end_of_turn>"};
  }
  return {};
}

std::vector<std::string> ChatTemplate::marker_strings() const {
  std::vector<std::string> out = required_tokens();
  out.insert(out.end(), {std::string(kThinkOpen), std::string(kThinkClose)});
  if (format_ == ChatFormat::mistral) out.insert(out.end(), {"[INST]", "[/INST]"});
  if (format_ == ChatFormat::qwen2 || format_ == ChatFormat::qwen3)
    out.insert(out.end(), {"<tool_response>", "</tool_response>"});
  return out;
}

std::string ChatTemplate::end_of_turn() const {
  switch (format_) {
    case ChatFormat::chatml:
    case ChatFormat::qwen2:
    case ChatFormat::qwen3: return "<|im_end|>";
    case ChatFormat::llama3: return "<|eot_id|>";
    case ChatFormat::mistral: return "</s>";
    case ChatFormat::deepseek_r1: return "<｜end▁of▁sentence｜>";
    case ChatFormat::gemma: return "<end_of_turn>";
  }
  return {};
}

std::vector<ChatSegment> ChatTemplate::render(const std::vector<Message>& messages, const ChatRenderOptions& options,
                                              std::string_view source) const {
  MLA_CHECK(!messages.empty(), source.empty() ? std::string("conversation") : std::string(source),
            ": empty conversation (no messages to render)");
  const ThinkPolicy think = options.think.value_or(default_think_policy());
  SegmentWriter w(options);
  std::string prompt;
  switch (format_) {
    case ChatFormat::chatml:
    case ChatFormat::qwen2:
      render_chatml(*this, messages, think, w);
      prompt = "<|im_start|>assistant\n";
      break;
    case ChatFormat::qwen3:
      render_qwen3(messages, think, w);
      prompt = "<|im_start|>assistant\n";
      break;
    case ChatFormat::llama3:
      render_llama3(messages, think, w);
      prompt = "<|start_header_id|>assistant<|end_header_id|>\n\n";
      break;
    case ChatFormat::mistral:
      render_mistral(messages, think, w, source);
      break;  // the prompt ends at [/INST]: the model writes " answer</s>"
    case ChatFormat::deepseek_r1:
      render_deepseek(messages, think, w, source);
      prompt = "<｜Assistant｜><think>\n";
      break;
    case ChatFormat::gemma:
      render_gemma(messages, think, w, source);
      prompt = "<start_of_turn>model\n";
      break;
  }
  if (options.add_generation_prompt) w.add(prompt, "", SegmentKind::generation_prompt, -1);
  return w.take();
}

std::string ChatTemplate::render_text(const std::vector<Message>& messages, const ChatRenderOptions& options,
                                      std::string_view source) const {
  std::string out;
  for (const ChatSegment& s : render(messages, options, source)) out += s.text;
  return out;
}

ChatTemplate detect_chat_template(const std::string& src, const std::string& origin) {
  const std::string supported = " (supported: " + joined_names() +
                                "; set the chat template by name to use one of them anyway)";
  if (python_strip(src).empty()) fail(origin, ": no chat template to detect", supported);
  if (contains(src, "<｜User｜>") || contains(src, "<｜Assistant｜>")) {
    if (!contains(src, kThinkOpen))
      log::warn(origin, ": DeepSeek template without <think> (DeepSeek-V3?); the deepseek_r1 built-in's generation "
                        "prompt opens a <think> block");
    return ChatTemplate::builtin("deepseek_r1");
  }
  if (contains(src, "<start_of_turn>")) return ChatTemplate::builtin("gemma");
  if (contains(src, "<|start_header_id|>")) {
    if (contains(src, "Cutting Knowledge Date"))
      log::warn(origin, ": Llama-3.1-style template; its automatic \"Cutting Knowledge Date\" system header is "
                        "not reproduced by the llama3 built-in");
    return ChatTemplate::builtin("llama3");
  }
  if (contains(src, "<<SYS>>"))
    fail(origin, ": the Llama-2 chat format ([INST] <<SYS>>) is not a built-in template", supported);
  if (contains(src, "[INST]")) return ChatTemplate::builtin("mistral");
  if (contains(src, "<|im_start|>")) {
    if (contains(src, kThinkClose) || contains(src, "reasoning_content")) return ChatTemplate::builtin("qwen3");
    const std::string system = literal_default_system(src);
    if (contains(src, "<tool_response>")) return ChatTemplate(ChatFormat::qwen2, "qwen2", system);
    return ChatTemplate(ChatFormat::chatml, "chatml", system);
  }
  fail(origin, ": chat template not recognised (none of the markers <|im_start|>, <|start_header_id|>, [INST], "
               "<｜Assistant｜>, <start_of_turn> found)",
       supported);
}

std::string read_chat_template_source(const std::string& model_dir) {
  namespace fs = std::filesystem;
  const std::string config = (fs::path(model_dir) / "tokenizer_config.json").string();
  if (file_exists(config)) {
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(read_text_file(config));
    } catch (const nlohmann::json::exception& e) {
      fail(config, ": not valid JSON (", e.what(), ")");
    }
    if (j.is_object() && j.contains("chat_template")) {
      const auto& t = j["chat_template"];
      if (t.is_string()) return t.get<std::string>();
      if (t.is_array()) {
        for (const auto& entry : t)
          if (entry.is_object() && entry.value("name", "") == "default" && entry.contains("template") &&
              entry["template"].is_string())
            return entry["template"].get<std::string>();
        fail(config, ": field 'chat_template' is a list without an entry named \"default\"");
      }
      if (!t.is_null()) fail(config, ": field 'chat_template' is neither a string nor a list of {name, template}");
    }
  }
  const std::string jinja = (fs::path(model_dir) / "chat_template.jinja").string();
  if (file_exists(jinja)) return read_text_file(jinja);
  return {};
}

ChatTemplate resolve_chat_template(const std::string& name, const std::string& jinja_source,
                                   const std::string& origin) {
  if (name.empty() || name == "auto") {
    if (python_strip(jinja_source).empty())
      fail(origin, ": has no chat template to detect; set the chat template by name (", joined_names(), ")");
    return detect_chat_template(jinja_source, origin);
  }
  ChatTemplate chosen = ChatTemplate::builtin(name);
  if (!python_strip(jinja_source).empty()) {
    try {
      const ChatTemplate own = detect_chat_template(jinja_source, origin);
      if (own.format() != chosen.format() || own.default_system() != chosen.default_system())
        log::warn(origin, ": using chat template ", chosen.describe(), " although the model's own template looks like ",
                  own.describe());
    } catch (const Error&) {
      // The model's template is none of ours: the explicit choice stands without comment.
    }
  }
  return chosen;
}

}  // namespace mlaforge

#pragma once
// Chat templates, torch-free: a conversation (data/conversation.h) rendered into the exact text a model's
// own Jinja template produces, split into segments that say which text the loss trains on.
//
// Built-in templates (no Jinja interpreter: each layout is written out here, and checked character for
// character against jinja2 running the real or transcribed template by tests/python/refs_chat.py):
//   chatml       <|im_start|>{role}\n{content}<|im_end|>\n per message, any role verbatim; no BOS.
//                A default system prompt (none for `chatml`) is rendered when the conversation has none,
//                as Qwen2 / SmolLM2 templates do (detect_chat_template reads it from the Jinja source).
//   qwen2        ChatML with Qwen2.5's default system prompt ("You are Qwen, created by Alibaba Cloud. You
//                are a helpful assistant.") and Qwen's tool turns (<|im_start|>user\n<tool_response>...).
//   qwen3        Qwen3's template: ChatML, no default system prompt, and its own <think> rule (assistant
//                turns after the last user query carry <think>\n{reasoning}\n</think>\n\n, the very last
//                one even when empty; earlier turns lose their reasoning).
//   llama3       <|begin_of_text|><|start_header_id|>{role}<|end_header_id|>\n\n{content|trim}<|eot_id|>
//                (Llama-3 / 3.1 / 3.2 turn layout; 3.1's automatic "Cutting Knowledge Date" system header
//                is not added: give a system message if you want one).
//   mistral      Mistral-7B-Instruct-v0.3's layout (mistral_common "v3"): <s>[INST] {user}[/INST]
//                {assistant|trim}</s>, the system prompt written before the LAST user message as
//                "[INST] {system}\n\n{user}[/INST]" (as the v0.3 template and mistral_common do), roles
//                alternating user/assistant. [INST]/[/INST] are control tokens in v3 vocabularies and plain
//                text in v1 (Mistral-7B v0.1, Mixtral-8x7B): tokenisation handles both. The assistant's
//                leading space is model output and trained.
//   deepseek_r1  <｜begin▁of▁sentence｜>{system}<｜User｜>{user}<｜Assistant｜>{assistant}<｜end▁of▁sentence｜>
//                (DeepSeek-R1 and its distilled models; system messages are joined by "\n\n" in front); the
//                generation prompt is "<｜Assistant｜><think>\n".
//   gemma        <bos><start_of_turn>{user|model}\n{content|trim}<end_of_turn>\n; the system prompt is
//                folded into the first user turn as "{system}\n\n" (Gemma 3's rule; Gemma 2 has no system
//                role), roles alternating user/model.
//
// Reasoning (<think>...</think>) in assistant messages, ThinkPolicy:
//   keep_all       every assistant turn keeps its reasoning;
//   strip_history  (the official DeepSeek-R1 / Qwen3 behaviour, their default here) assistant turns before
//                  the last user message lose their reasoning: what they keep is the text after the last
//                  "</think>" (DeepSeek: verbatim; Qwen3 and the others: leading newlines dropped). Turns
//                  after the last user message (the answers being trained) keep it. This makes the training
//                  history look exactly like the prompts the model is later given at inference.
//   strip_all      every assistant turn loses its reasoning (the official DeepSeek-R1 template's rendering
//                  of an assistant message; trains a model to answer without thinking).
// Templates whose official Jinja ignores <think> (chatml, qwen2, llama3, mistral, gemma) default to keep_all.
//
// Training signal: a segment is trained when its message's role is in ChatRenderOptions::trained_roles
// (default: assistant) and it is the message's content or its end-of-turn token (<|im_end|>, <|eot_id|>,
// </s>, <｜end▁of▁sentence｜>, <end_of_turn>): the model must learn to stop. Role headers, BOS, the
// separators after end tokens and the generation prompt are never trained.
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "data/conversation.h"

namespace mlaforge {

enum class ThinkPolicy { keep_all, strip_history, strip_all };
std::string_view think_policy_name(ThinkPolicy policy);
ThinkPolicy parse_think_policy(std::string_view name);  // keep_all | strip_history | strip_all; throws

enum class SegmentKind {
  bos,                // the template's BOS text
  header,             // role header: <|im_start|>assistant\n, <｜Assistant｜>, [INST] ...
  content,            // a message's text (system text folded into a user turn is role "system" content)
  end,                // the end-of-turn token closing a message (trained with the content)
  separator,          // text after an end token (ChatML's "\n"), never trained
  generation_prompt,  // add_generation_prompt: the assistant header the model continues from
};
std::string_view segment_kind_name(SegmentKind kind);

struct ChatSegment {
  std::string text;
  std::string role;      // role of the message this text comes from; "" for bos / generation_prompt
  SegmentKind kind = SegmentKind::content;
  bool trained = false;  // kind is content or end, and role is one of the trained roles
  int32_t message = -1;  // index into the conversation; -1 for bos / generation_prompt
};

struct ChatRenderOptions {
  bool add_generation_prompt = false;        // append the assistant header (inference prompts)
  std::optional<ThinkPolicy> think;          // unset: the template's own rule (see above)
  std::vector<std::string> trained_roles = {"assistant"};
};

enum class ChatFormat { chatml, qwen2, qwen3, llama3, mistral, deepseek_r1, gemma };

class ChatTemplate {
 public:
  // A built-in by name (see above); throws an Error listing the names for anything else.
  static ChatTemplate builtin(std::string_view name);
  static std::vector<std::string> builtin_names();

  ChatTemplate() : ChatTemplate(builtin("chatml")) {}
  ChatTemplate(ChatFormat format, std::string name, std::string default_system);

  const std::string& name() const { return name_; }
  ChatFormat format() const { return format_; }
  // The system prompt rendered when a conversation has none (ChatML formats only); "" for none.
  const std::string& default_system() const { return default_system_; }
  ThinkPolicy default_think_policy() const;
  // One line for logs: "qwen2 (default system prompt: \"You are Qwen...\")".
  std::string describe() const;

  // The literal strings this template writes that must each be ONE token of the model's vocabulary
  // (BOS, role and end-of-turn markers). [INST]/[/INST] are not listed: they are text in v1 vocabularies.
  std::vector<std::string> required_tokens() const;
  // Strings this template writes that may be single tokens (all added tokens of the family's
  // vocabularies: required_tokens() plus [INST], [/INST], <think>, </think>...). Tokenisation splits the
  // rendered text at those of them the tokenizer knows (see data/sft_sample.h).
  std::vector<std::string> marker_strings() const;
  // The end-of-turn string closing an assistant message (<|im_end|>, <|eot_id|>, </s>...).
  std::string end_of_turn() const;

  // Renders the conversation. Throws an Error naming `source` (Example::source) and the message for
  // roles the template does not support (tool turns outside chatml/qwen2/qwen3/llama3, a system message
  // after the first one in gemma/mistral, roles not alternating user/assistant in gemma/mistral) and for
  // an empty conversation.
  std::vector<ChatSegment> render(const std::vector<Message>& messages, const ChatRenderOptions& options = {},
                                  std::string_view source = {}) const;
  // The concatenated text of render(): what the model's Jinja template returns.
  std::string render_text(const std::vector<Message>& messages, const ChatRenderOptions& options = {},
                          std::string_view source = {}) const;

 private:
  ChatFormat format_;
  std::string name_;
  std::string default_system_;
};

// Which built-in a model's Jinja chat template (tokenizer_config.json "chat_template") is, recognised by
// its markers: <｜User｜>/<｜Assistant｜> -> deepseek_r1, <start_of_turn> -> gemma, <|start_header_id|> ->
// llama3, [INST] (without Llama-2's <<SYS>>) -> mistral, <|im_start|> -> qwen3 when it handles </think>,
// qwen2 when it wraps <tool_response>, else chatml; for the ChatML ones the default system prompt written
// in the template ('<|im_start|>system\nYou are ...<|im_end|>') is taken over. Throws an Error that names
// `origin` and lists the supported templates when nothing matches (or the source is empty).
ChatTemplate detect_chat_template(const std::string& jinja_source, const std::string& origin = "chat template");

// The chat template text of a model folder, as transformers finds it: tokenizer_config.json's
// "chat_template" (a string, or the entry named "default" of a list of {name, template}), else the file
// chat_template.jinja; "" when there is none. Throws naming the file on invalid JSON.
std::string read_chat_template_source(const std::string& model_dir);

// What a recipe's `chat_template:` setting means: a built-in name, or "auto" / "" to detect it from
// jinja_source (the model's template, e.g. ModelSource::chat_template). An explicit name wins over the
// model's template (a warning is logged when they disagree). Throws when auto finds nothing to detect.
ChatTemplate resolve_chat_template(const std::string& name, const std::string& jinja_source,
                                   const std::string& origin = "model");

// Python's str.strip() / Jinja's `trim`: removes the Unicode whitespace Python's str.isspace() knows from
// both ends of UTF-8 text. Exposed for tests.
std::string python_strip(std::string_view text);

}  // namespace mlaforge

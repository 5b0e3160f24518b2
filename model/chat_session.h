#pragma once
// A multi-turn chat on a model's own chat template (data/chat_template.h), keeping the KV cache across
// turns (`mlaforge chat`).
//
// Every turn re-renders the whole conversation with the generation prompt and tokenises it the way
// training does (SampleBuilder::encode_prompt: segment-wise at the template's marker tokens, equal to
// encoding the whole text), then hands the ids to a DecodeSession, which keeps the cached prefix the new
// ids share with what it already ran and prefills only the rest. The rendering is therefore always the
// exact prompt a fresh decode would see (tests/torch/chat_session_test.cpp: every turn equals
// generate() on the re-rendered conversation from scratch, token for token), and the cache is an
// optimisation that never changes the answer:
//   * a template that only appends (ChatML, Llama-3) reuses everything up to the reply's last token; the
//     reply's end-of-turn token and the next user turn are prefilled. (When the reply's text re-encodes to
//     other tokens than the ones sampled -- BPE has several spellings of most strings -- the cache is
//     kept up to the first differing token.)
//   * a template that rewrites history (Qwen3 / DeepSeek-R1 drop the reasoning of earlier answers) is
//     re-prefilled from the first token that changed.
// ChatTurn reports how many prompt tokens were reused and how many prefilled.
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "data/chat_template.h"
#include "data/conversation.h"
#include "data/sft_sample.h"
#include "data/tokenizer.h"
#include "model/generate.h"

namespace mlaforge {

// Incremental detokenisation for streaming output: ids go in, the text that became stable comes out.
// Decoding ids one by one is wrong for byte-level and SentencePiece vocabularies (a character can span
// tokens, leading spaces depend on context), so the whole reply is decoded each time and only a grown,
// complete-UTF-8 prefix of it is released.
class TextStreamer {
 public:
  explicit TextStreamer(const Tokenizer& tokenizer, bool skip_special = true)
      : tokenizer_(tokenizer), skip_special_(skip_special) {}
  // Adds one token; returns the newly printable text (often empty).
  std::string push(int64_t id);
  // The text not released yet (call once at the end).
  std::string finish();
  // Everything decoded so far.
  const std::string& text() const { return text_; }

 private:
  const Tokenizer& tokenizer_;
  bool skip_special_;
  std::vector<int32_t> ids_;
  std::string text_;
  size_t released_ = 0;
};

struct ChatOptions {
  ChatTemplate chat_template;
  std::optional<ThinkPolicy> think;   // unset: the template's own rule
  std::string system;                 // system prompt ("" none: the template's default, if it has one)
  SamplingOptions sampling;           // stop_ids: the model's EOS ids; the template's end-of-turn is added
  std::vector<std::string> stop_strings;
  int64_t max_context = 0;            // prompt + max_new_tokens limit in tokens; 0: none
};

struct ChatTurn {
  std::string reply;           // the reply text as it goes into the history (special tokens dropped)
  GenerateResult result;       // tokens, stop reason, timings, prompt_tokens / reused_tokens
  int64_t prefilled_tokens() const { return result.prompt_tokens - result.reused_tokens; }
};

class ChatSession {
 public:
  // The tokenizer must outlive the session. Throws when the template's markers are not single tokens of
  // this vocabulary (the template does not belong to the model).
  ChatSession(DecoderImpl& model, const Tokenizer& tokenizer, ChatOptions options);

  // Adds the user message, decodes the reply (on_text receives it as it becomes printable) and appends it
  // to the conversation. On an error before decoding (the conversation outgrew max_context, a template
  // that cannot render it) the user message is taken back and the error rethrown.
  ChatTurn reply(const std::string& user, const std::function<void(std::string_view)>& on_text = {},
                 const LogitsObserver& on_logits = {});
  // Forgets the conversation (the system prompt stays) and empties the cache.
  void reset();

  const std::vector<Message>& messages() const { return messages_; }
  // The conversation so far rendered with the generation prompt, as ids: what the next turn's decode
  // continues (after its user message is added). For tests: decoding this from scratch must equal reply().
  std::vector<int64_t> prompt_ids() const;
  const DecodeSession& decode_session() const { return session_; }
  const ChatOptions& options() const { return options_; }

 private:
  const Tokenizer& tokenizer_;
  ChatOptions options_;
  SampleBuilder builder_;
  DecodeSession session_;
  std::vector<Message> messages_;
};

// The stop ids for chatting with `tokenizer` on `chat_template`: `eos_ids`, the tokenizer's EOS and the
// template's end-of-turn token (when it is one token), without repeats.
std::vector<int64_t> chat_stop_ids(const Tokenizer& tokenizer, const ChatTemplate& chat_template,
                                   const std::vector<int64_t>& eos_ids);

}  // namespace mlaforge

#pragma once
// Options and helpers shared by `mlaforge generate` and `mlaforge chat`: sampling flags, chat-template
// flags, stop ids, and how a prompt becomes token ids.
#include <CLI/CLI.hpp>

#include <optional>
#include <string>
#include <vector>

#include "data/chat_template.h"
#include "data/tokenizer.h"
#include "model/checkpoint.h"
#include "model/generate.h"

namespace mlaforge::cli {

// --max-new-tokens --temperature --top-k --top-p --repetition-penalty --seed --stop.
void add_sampling_options(CLI::App& cmd, SamplingOptions& sampling, std::vector<std::string>& stop);
// Range checks of the values (errors name the flag).
void check_sampling_options(const SamplingOptions& sampling);

struct ChatTemplateOptions {
  std::string name = "auto";  // --chat-template: a built-in, or auto (the model's own)
  std::string system;         // --system
  std::string think_policy;   // --think-policy: "" = the template's rule
};
void add_chat_template_options(CLI::App& cmd, ChatTemplateOptions& options);
// The template to use for this model: --chat-template by name, else detected from the model's own Jinja
// template; an error naming the model and the built-ins when there is none.
ChatTemplate resolve_cli_chat_template(const ChatTemplateOptions& options, const ModelSource& source);
std::optional<ThinkPolicy> cli_think_policy(const ChatTemplateOptions& options);

// The model's EOS ids (config.json / generation_config.json) plus the tokenizer's EOS.
std::vector<int64_t> model_eos_ids(const ModelSource& source);

// A plain prompt: BOS (unless no_bos or the model has none) + the text's tokens.
std::vector<int64_t> encode_plain_prompt(const Tokenizer& tokenizer, const ModelSource& source,
                                         const std::string& text, bool no_bos);
// A prompt wrapped in the chat template as one user turn (after the system prompt, if any), with the
// generation prompt: what the model's chat interface would feed it. The template writes its own BOS.
std::vector<int64_t> encode_chat_prompt(const Tokenizer& tokenizer, const ChatTemplate& chat_template,
                                        std::optional<ThinkPolicy> think, const std::string& system,
                                        const std::string& text);

// One line of stderr statistics: "KV cache 1.2 MiB for 57 tokens (21.1 KiB/token)".
std::string kv_cache_summary(int64_t used_bytes, int64_t tokens);

}  // namespace mlaforge::cli

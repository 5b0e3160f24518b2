#include "cli/chat_support.h"

#include <algorithm>

#include "cli/common.h"
#include "core/error.h"
#include "data/sft_sample.h"

namespace mlaforge::cli {

void add_sampling_options(CLI::App& cmd, SamplingOptions& s, std::vector<std::string>& stop) {
  cmd.add_option("--max-new-tokens", s.max_new_tokens, "tokens to generate (per reply / sequence)")
      ->capture_default_str();
  cmd.add_option("--temperature", s.temperature, "0 = greedy")->capture_default_str();
  cmd.add_option("--top-k", s.top_k, "sample from the k most likely tokens (0: off)");
  cmd.add_option("--top-p", s.top_p, "nucleus sampling mass (1: off)");
  cmd.add_option("--repetition-penalty", s.repetition_penalty, "CTRL repetition penalty (1: off)");
  cmd.add_option("--seed", s.seed, "sampling seed");
  cmd.add_option("--stop", stop, "stop when the output contains this string (repeatable)");
}

void check_sampling_options(const SamplingOptions& s) {
  MLA_CHECK(s.max_new_tokens > 0, "--max-new-tokens must be positive");
  MLA_CHECK(s.temperature >= 0, "--temperature must be >= 0");
  MLA_CHECK(s.top_k >= 0, "--top-k must be >= 0");
  MLA_CHECK(s.top_p > 0 && s.top_p <= 1, "--top-p must be in (0, 1]");
  MLA_CHECK(s.repetition_penalty > 0, "--repetition-penalty must be positive");
}

void add_chat_template_options(CLI::App& cmd, ChatTemplateOptions& o) {
  std::string names;
  for (const auto& n : ChatTemplate::builtin_names()) names += (names.empty() ? "" : ", ") + n;
  cmd.add_option("--chat-template", o.name, "chat template: auto (the model's own) or one of " + names)
      ->capture_default_str();
  cmd.add_option("--system", o.system, "system prompt (default: the template's own, if any)");
  cmd.add_option("--think-policy", o.think_policy,
                 "reasoning in earlier answers: keep_all, strip_history, strip_all (default: the template's rule)");
}

ChatTemplate resolve_cli_chat_template(const ChatTemplateOptions& o, const ModelSource& source) {
  return resolve_chat_template(o.name, source.chat_template, source.path);
}

std::optional<ThinkPolicy> cli_think_policy(const ChatTemplateOptions& o) {
  if (o.think_policy.empty()) return std::nullopt;
  return parse_think_policy(o.think_policy);
}

std::vector<int64_t> model_eos_ids(const ModelSource& source) {
  std::vector<int64_t> ids = source.config.eos_token_ids;
  if (source.tokenizer && source.tokenizer->eos_id &&
      std::find(ids.begin(), ids.end(), *source.tokenizer->eos_id) == ids.end())
    ids.push_back(*source.tokenizer->eos_id);
  return ids;
}

std::vector<int64_t> encode_plain_prompt(const Tokenizer& tok, const ModelSource& source, const std::string& text,
                                         bool no_bos) {
  std::vector<int64_t> prompt;
  std::optional<int64_t> bos = tok.bos_id ? std::optional<int64_t>(*tok.bos_id) : source.config.bos_token_id;
  if (bos && !no_bos) prompt.push_back(*bos);
  for (int32_t id : tok.encode(text, false)) prompt.push_back(id);
  MLA_CHECK(!prompt.empty(), "empty prompt and no BOS token: nothing to condition on");
  return prompt;
}

std::vector<int64_t> encode_chat_prompt(const Tokenizer& tok, const ChatTemplate& chat_template,
                                        std::optional<ThinkPolicy> think, const std::string& system,
                                        const std::string& text) {
  single_token_markers(tok, chat_template);  // a clear error when the template is not this model's
  const SampleBuilder builder(tok, chat_template, SampleOptions{.render = {.think = think}});
  std::vector<Message> messages;
  if (!system.empty()) messages.push_back({"system", system});
  messages.push_back({"user", text});
  const std::vector<int32_t> ids = builder.encode_prompt(messages, "prompt");
  return {ids.begin(), ids.end()};
}

std::string kv_cache_summary(int64_t used_bytes, int64_t tokens) {
  std::string s = "KV cache " + human_bytes(static_cast<double>(used_bytes)) + " for " + std::to_string(tokens) +
                  " tokens";
  if (tokens > 0) s += " (" + human_bytes(static_cast<double>(used_bytes) / static_cast<double>(tokens)) + "/token)";
  return s;
}

}  // namespace mlaforge::cli

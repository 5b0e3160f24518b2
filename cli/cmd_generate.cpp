// mlaforge generate MODEL --prompt TEXT: greedy or sampled decoding with a KV cache; --chat wraps the prompt
// in the model's chat template; --batch-prompts FILE decodes one prompt per line as one batch.
#include <fstream>
#include <iostream>

#include "cli/chat_support.h"
#include "cli/common.h"
#include "core/error.h"
#include "data/tokenizer.h"
#include "model/chat_session.h"
#include "model/generate.h"
#include "model/tensor_io.h"

namespace mlaforge::cli {
namespace {

struct GenerateCommandOptions {
  ModelOptions model;
  std::string prompt;
  std::string batch_prompts;  // file: one prompt per line
  bool chat = false;
  ChatTemplateOptions chat_template;
  bool no_bos = false;
  std::vector<std::string> stop;
  SamplingOptions sampling;
};

// The prompts of --batch-prompts: every non-empty line (a trailing '\r' dropped).
std::vector<std::string> read_prompt_lines(const std::string& path) {
  std::ifstream in(path);
  MLA_CHECK(in.good(), path, ": cannot open the prompts file (--batch-prompts)");
  std::vector<std::string> prompts;
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (!line.empty()) prompts.push_back(line);
  }
  MLA_CHECK(!prompts.empty(), path, ": no prompts (one prompt per non-empty line)");
  return prompts;
}

bool contains_any(const std::string& text, const std::vector<std::string>& stops) {
  for (const auto& s : stops)
    if (!s.empty() && text.find(s) != std::string::npos) return true;
  return false;
}

void run_batch(const GenerateCommandOptions& o, const ModelSource& src, DecoderImpl& model,
               const std::vector<std::vector<int64_t>>& prompts, const std::vector<std::string>& texts) {
  const Tokenizer& tok = *src.tokenizer;
  // Stop strings per sequence: each row decodes its own text so far.
  std::vector<std::vector<int32_t>> generated(prompts.size());
  auto on_token = [&](size_t b, int64_t id) {
    generated[b].push_back(static_cast<int32_t>(id));
    return o.stop.empty() || !contains_any(tok.decode(generated[b], true), o.stop);
  };
  BatchGenerateResult r = generate_batch(model, prompts, o.sampling, on_token);
  const int64_t total = r.generated_tokens();
  const double tps = r.decode_seconds > 0 ? static_cast<double>(total - static_cast<int64_t>(prompts.size())) /
                                                r.decode_seconds
                                          : 0;
  nlohmann::json sequences = nlohmann::json::array();
  for (size_t b = 0; b < prompts.size(); ++b) {
    const GenerateResult& s = r.sequences[b];
    const std::string text = tok.decode(std::vector<int32_t>(s.tokens.begin(), s.tokens.end()), true);
    if (global_options().json) {
      sequences.push_back({{"prompt", texts[b]}, {"prompt_tokens", prompts[b]}, {"tokens", s.tokens},
                           {"text", text}, {"stop_reason", s.stop_reason}});
    } else {
      std::cout << "--- [" << b + 1 << "/" << prompts.size() << "] " << s.tokens.size() << " tokens, stop: "
                << s.stop_reason << "\n"
                << (o.chat ? "" : texts[b]) << text << "\n";
    }
  }
  if (global_options().json) {
    print_json({{"sequences", sequences}, {"batch", prompts.size()}, {"padded_prompt_length", r.padded_length},
                {"prefill_seconds", r.prefill_seconds}, {"decode_seconds", r.decode_seconds},
                {"decode_steps", r.steps}, {"decode_tokens_per_second", tps}, {"kv_cache_bytes", r.cache_bytes}});
  } else {
    std::cout << std::flush;
    std::fprintf(stderr, "[batch %zu: %lld tokens in %lld steps, prefill %.2f s (%lld x %lld), decode %.1f tok/s, KV cache %s]\n",
                 prompts.size(), static_cast<long long>(total), static_cast<long long>(r.steps), r.prefill_seconds,
                 static_cast<long long>(prompts.size()), static_cast<long long>(r.padded_length), tps,
                 human_bytes(static_cast<double>(r.cache_bytes)).c_str());
  }
}

void run_single(const GenerateCommandOptions& o, const ModelSource& src, DecoderImpl& model,
                const std::vector<int64_t>& prompt) {
  const Tokenizer& tok = *src.tokenizer;
  const bool stream = !global_options().json;
  TextStreamer streamer(tok);
  auto on_token = [&](int64_t id) {
    const std::string piece = streamer.push(id);
    if (stream && !piece.empty()) std::cout << piece << std::flush;
    return !contains_any(streamer.text(), o.stop);
  };
  if (stream && !o.chat) std::cout << o.prompt << std::flush;
  GenerateResult r = generate(model, prompt, o.sampling, on_token);
  const std::string rest = streamer.finish();
  std::vector<int32_t> ids(r.tokens.begin(), r.tokens.end());
  const std::string text = tok.decode(ids, true);
  const double tps = r.decode_seconds > 0 ? (r.tokens.size() - 1) / r.decode_seconds : 0;
  if (global_options().json) {
    print_json({{"prompt", o.prompt}, {"prompt_tokens", prompt}, {"tokens", r.tokens}, {"text", text},
                {"stop_reason", r.stop_reason}, {"prefill_seconds", r.prefill_seconds},
                {"decode_seconds", r.decode_seconds}, {"decode_tokens_per_second", tps},
                {"kv_cache_bytes", r.cache_bytes}});
  } else {
    std::cout << rest << std::endl;
    std::fprintf(stderr, "[%zu tokens, stop: %s, prefill %.2f s, decode %.1f tok/s, KV cache %s]\n", r.tokens.size(),
                 r.stop_reason.c_str(), r.prefill_seconds, tps, human_bytes(static_cast<double>(r.cache_bytes)).c_str());
  }
}

}  // namespace

void register_generate(CLI::App& app) {
  auto o = std::make_shared<GenerateCommandOptions>();
  auto* cmd = app.add_subcommand("generate", "Generate text from a prompt");
  add_model_options(*cmd, o->model);
  auto* prompt = cmd->add_option("--prompt", o->prompt, "prompt text (may be empty: start from BOS)");
  cmd->add_option("--batch-prompts", o->batch_prompts,
                  "file with one prompt per line, decoded together as one left-padded batch")
      ->excludes(prompt);
  cmd->add_flag("--chat", o->chat, "wrap each prompt in the chat template as a user turn (+ --system)");
  add_chat_template_options(*cmd, o->chat_template);
  add_sampling_options(*cmd, o->sampling, o->stop);
  cmd->add_flag("--no-bos", o->no_bos, "do not prepend the BOS token (plain prompts)");
  cmd->add_flag("--json", global_options().json, "machine-readable output");
  cmd->callback([o] {
    run_command([&] {
      check_sampling_options(o->sampling);
      LoadOptions load;
      load.tokenizer_path = o->model.tokenizer;
      ModelSource src = load_model_source(o->model.model, load);
      MLA_CHECK(src.tokenizer != nullptr, o->model.model, ": no tokenizer found; pass --tokenizer");
      const Tokenizer& tok = *src.tokenizer;

      std::optional<ChatTemplate> chat_template;
      std::vector<int64_t> eos = model_eos_ids(src);
      if (o->chat) {
        chat_template = resolve_cli_chat_template(o->chat_template, src);
        eos = chat_stop_ids(tok, *chat_template, eos);
      } else {
        MLA_CHECK(o->chat_template.system.empty() && o->chat_template.think_policy.empty(),
                  "--system and --think-policy need --chat");
      }
      o->sampling.stop_ids = eos;
      auto encode = [&](const std::string& text) {
        return chat_template ? encode_chat_prompt(tok, *chat_template, cli_think_policy(o->chat_template),
                                                  o->chat_template.system, text)
                             : encode_plain_prompt(tok, src, text, o->no_bos);
      };

      std::vector<std::string> texts;
      if (!o->batch_prompts.empty()) texts = read_prompt_lines(o->batch_prompts);
      std::vector<std::vector<int64_t>> prompts;
      for (const auto& t : texts) prompts.push_back(encode(t));
      const std::vector<int64_t> single = texts.empty() ? encode(o->prompt) : std::vector<int64_t>{};

      Decoder model = build_model(src, parse_torch_dtype(o->model.dtype), parse_device(o->model.device));
      if (!texts.empty()) {
        run_batch(*o, src, *model, prompts, texts);
      } else {
        run_single(*o, src, *model, single);
      }
    });
  });
}

}  // namespace mlaforge::cli

// mlaforge generate MODEL --prompt TEXT: greedy or sampled decoding with a KV cache.
#include <iostream>

#include "cli/common.h"
#include "core/error.h"
#include "data/tokenizer.h"
#include "model/generate.h"
#include "model/tensor_io.h"

namespace mlaforge::cli {
namespace {

struct GenerateCommandOptions {
  ModelOptions model;
  std::string prompt;
  bool no_bos = false;
  std::vector<std::string> stop;
  SamplingOptions sampling;
};

}  // namespace

void register_generate(CLI::App& app) {
  auto o = std::make_shared<GenerateCommandOptions>();
  auto* cmd = app.add_subcommand("generate", "Generate text from a prompt");
  add_model_options(*cmd, o->model);
  cmd->add_option("--prompt", o->prompt, "prompt text (may be empty: start from BOS)");
  cmd->add_option("--max-new-tokens", o->sampling.max_new_tokens, "tokens to generate")->capture_default_str();
  cmd->add_option("--temperature", o->sampling.temperature, "0 = greedy")->capture_default_str();
  cmd->add_option("--top-k", o->sampling.top_k, "sample from the k most likely tokens (0: off)");
  cmd->add_option("--top-p", o->sampling.top_p, "nucleus sampling mass (1: off)");
  cmd->add_option("--repetition-penalty", o->sampling.repetition_penalty, "CTRL repetition penalty (1: off)");
  cmd->add_option("--seed", o->sampling.seed, "sampling seed");
  cmd->add_option("--stop", o->stop, "stop when the output contains this string (repeatable)");
  cmd->add_flag("--no-bos", o->no_bos, "do not prepend the BOS token");
  cmd->add_flag("--json", global_options().json, "machine-readable output");
  cmd->callback([o] {
    run_command([&] {
      MLA_CHECK(o->sampling.max_new_tokens > 0, "--max-new-tokens must be positive");
      MLA_CHECK(o->sampling.temperature >= 0, "--temperature must be >= 0");
      MLA_CHECK(o->sampling.top_p > 0 && o->sampling.top_p <= 1, "--top-p must be in (0, 1]");
      LoadOptions load;
      load.tokenizer_path = o->model.tokenizer;
      ModelSource src = load_model_source(o->model.model, load);
      MLA_CHECK(src.tokenizer != nullptr, o->model.model, ": no tokenizer found; pass --tokenizer");
      const Tokenizer& tok = *src.tokenizer;

      std::vector<int64_t> prompt;
      std::optional<int64_t> bos = tok.bos_id ? std::optional<int64_t>(*tok.bos_id) : src.config.bos_token_id;
      if (bos && !o->no_bos) prompt.push_back(*bos);
      for (int32_t id : tok.encode(o->prompt, false)) prompt.push_back(id);
      MLA_CHECK(!prompt.empty(), "empty prompt and no BOS token: nothing to condition on");

      o->sampling.stop_ids = src.config.eos_token_ids;
      if (tok.eos_id && std::find(o->sampling.stop_ids.begin(), o->sampling.stop_ids.end(), *tok.eos_id) ==
                            o->sampling.stop_ids.end())
        o->sampling.stop_ids.push_back(*tok.eos_id);

      Decoder model = build_model(src, parse_torch_dtype(o->model.dtype), parse_device(o->model.device));
      const bool stream = !global_options().json;
      std::vector<int32_t> generated;
      std::string printed;
      auto on_token = [&](int64_t id) {
        generated.push_back(static_cast<int32_t>(id));
        const std::string text = tok.decode(generated, /*skip_special=*/true);
        // Print only the stable prefix: a multi-byte character may still be incomplete.
        if (stream && text.size() > printed.size() && text.compare(0, printed.size(), printed) == 0 &&
            (text.back() & 0x80) == 0) {
          std::cout << text.substr(printed.size()) << std::flush;
          printed = text;
        }
        for (const auto& s : o->stop)
          if (!s.empty() && text.find(s) != std::string::npos) return false;
        return true;
      };
      if (stream) std::cout << o->prompt << std::flush;
      GenerateResult r = generate(*model, prompt, o->sampling, on_token);
      std::vector<int32_t> ids(r.tokens.begin(), r.tokens.end());
      const std::string text = tok.decode(ids, true);
      const double tps = r.decode_seconds > 0 ? (r.tokens.size() - 1) / r.decode_seconds : 0;
      if (global_options().json) {
        print_json({{"prompt", o->prompt}, {"prompt_tokens", prompt}, {"tokens", r.tokens}, {"text", text},
                    {"stop_reason", r.stop_reason}, {"prefill_seconds", r.prefill_seconds},
                    {"decode_seconds", r.decode_seconds}, {"decode_tokens_per_second", tps},
                    {"kv_cache_bytes", r.cache_bytes}});
      } else {
        if (text.size() > printed.size()) std::cout << text.substr(printed.size());
        std::cout << std::endl;
        std::fprintf(stderr, "[%zu tokens, stop: %s, prefill %.2f s, decode %.1f tok/s, KV cache %s]\n",
                     r.tokens.size(), r.stop_reason.c_str(), r.prefill_seconds, tps,
                     human_bytes(static_cast<double>(r.cache_bytes)).c_str());
      }
    });
  });
}

}  // namespace mlaforge::cli

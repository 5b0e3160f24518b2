// mlaforge chat MODEL: an interactive multi-turn chat on the model's chat template, one user turn per line
// of stdin (so it works piped too), the KV cache kept across turns (model/chat_session.h). Commands:
// /reset (forget the conversation), /exit. The reply streams to stdout; per-turn statistics (tokens,
// reused vs prefilled prompt tokens, decode speed, KV-cache bytes) go to stderr. --json prints one JSON
// object per turn instead.
#include <unistd.h>

#include <iostream>

#include "cli/chat_support.h"
#include "cli/common.h"
#include "core/error.h"
#include "core/log.h"
#include "model/chat_session.h"
#include "model/tensor_io.h"

namespace mlaforge::cli {
namespace {

struct ChatCommandOptions {
  ModelOptions model;
  ChatTemplateOptions chat_template;
  std::vector<std::string> stop;
  SamplingOptions sampling;
  int64_t max_context = 0;
};

void print_turn_stats(const ChatTurn& turn, const DecodeSession& session) {
  const GenerateResult& r = turn.result;
  const double tps = r.decode_seconds > 0 ? static_cast<double>(r.tokens.size() - 1) / r.decode_seconds : 0;
  std::fprintf(stderr, "[%zu tokens (%s) | prompt %lld tokens: %lld cached, %lld prefilled in %.2f s | %.1f tok/s | %s]\n",
               r.tokens.size(), r.stop_reason.c_str(), static_cast<long long>(r.prompt_tokens),
               static_cast<long long>(r.reused_tokens), static_cast<long long>(turn.prefilled_tokens()),
               r.prefill_seconds, tps,
               kv_cache_summary(session.used_cache_bytes(), session.cache().length()).c_str());
}

nlohmann::json turn_json(int64_t index, const std::string& user, const ChatTurn& turn, const DecodeSession& session) {
  const GenerateResult& r = turn.result;
  const double tps = r.decode_seconds > 0 ? static_cast<double>(r.tokens.size() - 1) / r.decode_seconds : 0;
  return {{"turn", index}, {"user", user}, {"reply", turn.reply}, {"tokens", r.tokens},
          {"stop_reason", r.stop_reason}, {"prompt_tokens", r.prompt_tokens}, {"reused_tokens", r.reused_tokens},
          {"prefilled_tokens", turn.prefilled_tokens()}, {"prefill_seconds", r.prefill_seconds},
          {"decode_seconds", r.decode_seconds}, {"decode_tokens_per_second", tps},
          {"cached_tokens", session.cache().length()}, {"kv_cache_bytes", session.used_cache_bytes()},
          {"kv_cache_allocated_bytes", r.cache_bytes}};
}

}  // namespace

void register_chat(CLI::App& app) {
  auto o = std::make_shared<ChatCommandOptions>();
  auto* cmd = app.add_subcommand(
      "chat", "Multi-turn chat on the model's chat template: one user turn per stdin line; /reset, /exit");
  add_model_options(*cmd, o->model);
  add_chat_template_options(*cmd, o->chat_template);
  add_sampling_options(*cmd, o->sampling, o->stop);
  cmd->add_option("--max-context", o->max_context,
                  "tokens a turn may reach (prompt + --max-new-tokens); 0: the model's max_position_embeddings");
  cmd->add_flag("--json", global_options().json, "one JSON object per turn instead of streamed text");
  cmd->callback([o] {
    run_command([&] {
      check_sampling_options(o->sampling);
      MLA_CHECK(o->max_context >= 0, "--max-context must be >= 0");
      LoadOptions load;
      load.tokenizer_path = o->model.tokenizer;
      ModelSource src = load_model_source(o->model.model, load);
      MLA_CHECK(src.tokenizer != nullptr, o->model.model, ": no tokenizer found; pass --tokenizer");

      ChatOptions chat;
      chat.chat_template = resolve_cli_chat_template(o->chat_template, src);
      chat.think = cli_think_policy(o->chat_template);
      chat.system = o->chat_template.system;
      chat.sampling = o->sampling;
      chat.sampling.stop_ids = model_eos_ids(src);
      chat.stop_strings = o->stop;
      chat.max_context = o->max_context > 0 ? o->max_context : src.config.max_position_embeddings;
      Decoder model = build_model(src, parse_torch_dtype(o->model.dtype), parse_device(o->model.device));
      ChatSession session(*model, *src.tokenizer, chat);
      log::info("chat template ", session.options().chat_template.describe(), ", think policy ",
                think_policy_name(chat.think.value_or(session.options().chat_template.default_think_policy())),
                ", KV cache ", human_bytes(static_cast<double>(src.config.kv_cache_values_per_token()) *
                                           static_cast<double>(torch::elementSize(parse_torch_dtype(o->model.dtype)))),
                "/token", src.config.is_mla() ? " (MLA latent)" : "");

      const bool json = global_options().json;
      const bool interactive = isatty(STDIN_FILENO) != 0;
      int64_t turns = 0, failed = 0;
      std::string line;
      while (true) {
        if (interactive) std::cout << "> " << std::flush;
        if (!std::getline(std::cin, line)) break;
        if (!line.empty() && line.back() == '\r') line.pop_back();
        if (line.empty()) continue;
        if (line == "/exit" || line == "/quit") break;
        if (line == "/reset") {
          session.reset();
          if (json) std::cout << nlohmann::json{{"event", "reset"}}.dump() << std::endl;
          std::fprintf(stderr, "[conversation reset]\n");
          continue;
        }
        if (line[0] == '/' && line.find(' ') == std::string::npos) {
          std::fprintf(stderr, "unknown command %s (commands: /reset, /exit)\n", line.c_str());
          continue;
        }
        ChatTurn turn;
        try {
          turn = session.reply(line, [&](std::string_view piece) {
            if (!json) std::cout << piece << std::flush;
          });
        } catch (const Error& e) {
          ++failed;
          std::cerr << "mlaforge: error: " << e.what() << std::endl;
          continue;
        }
        ++turns;
        if (json) {
          std::cout << turn_json(turns, line, turn, session.decode_session()).dump() << std::endl;
        } else {
          std::cout << std::endl;
          print_turn_stats(turn, session.decode_session());
        }
      }
      MLA_CHECK(failed == 0, failed, " of ", turns + failed, " turns failed (see above)");
    });
  });
}

}  // namespace mlaforge::cli

// mlaforge eval MODEL --text FILE: mean NLL and perplexity on held-out text.
#include <iostream>

#include "cli/common.h"
#include "core/error.h"
#include "core/log.h"
#include "data/text.h"
#include "data/tokenizer.h"
#include "model/tensor_io.h"
#include "trainer/evaluate.h"

namespace mlaforge::cli {
namespace {

struct EvalCommandOptions {
  ModelOptions model;
  std::string text;
  std::string jsonl_field = "text";
  int64_t max_seq_len = 512;
  size_t max_docs = 0;
  int64_t batch_tokens = 8192;
};

}  // namespace

void register_eval(CLI::App& app) {
  auto o = std::make_shared<EvalCommandOptions>();
  auto* cmd = app.add_subcommand("eval", "Mean NLL and perplexity of a model on text");
  add_model_options(*cmd, o->model);
  cmd->add_option("--text", o->text, "text file (documents split at blank lines) or JSONL (one per row)")->required();
  cmd->add_option("--jsonl-field", o->jsonl_field, "JSONL field holding the text")->capture_default_str();
  cmd->add_option("--max-seq-len", o->max_seq_len, "tokens per document, BOS included")->capture_default_str();
  cmd->add_option("--max-docs", o->max_docs, "evaluate only the first N documents (0: all)");
  cmd->add_option("--batch-tokens", o->batch_tokens, "padded tokens per forward pass")->capture_default_str();
  cmd->add_flag("--json", global_options().json, "machine-readable output");
  cmd->callback([o] {
    run_command([&] {
      MLA_CHECK(o->max_seq_len >= 2, "--max-seq-len must be at least 2");
      LoadOptions load;
      load.tokenizer_path = o->model.tokenizer;
      ModelSource src = load_model_source(o->model.model, load);
      MLA_CHECK(src.tokenizer != nullptr, o->model.model, ": no tokenizer found; pass --tokenizer");
      TextReadOptions read;
      read.jsonl_field = o->jsonl_field;
      read.max_documents = o->max_docs;
      auto docs = read_documents(o->text, read);
      auto tokens = tokenize_documents(*src.tokenizer, src.config, docs, o->max_seq_len);
      Decoder model = build_model(src, parse_torch_dtype(o->model.dtype), parse_device(o->model.device));
      EvalOptions eval;
      eval.max_seq_len = o->max_seq_len;
      eval.batch_tokens = o->batch_tokens;
      eval.progress = !global_options().json;
      EvalResult r = evaluate_nll(*model, tokens, eval);
      nlohmann::json j = {{"model", o->model.model}, {"text", o->text},       {"documents", r.documents},
                          {"tokens", r.tokens},      {"mean_nll", r.mean_nll}, {"perplexity", r.perplexity},
                          {"seconds", r.seconds},    {"tokens_per_second", r.tokens / std::max(r.seconds, 1e-9)},
                          {"dtype", o->model.dtype}, {"max_seq_len", o->max_seq_len}};
      if (global_options().json) {
        print_json(j);
      } else {
        std::printf("documents %lld, predicted tokens %lld\nmean NLL %.4f nats, perplexity %.3f (%.1f s, %.0f tok/s)\n",
                    static_cast<long long>(r.documents), static_cast<long long>(r.tokens), r.mean_nll, r.perplexity,
                    r.seconds, r.tokens / std::max(r.seconds, 1e-9));
      }
    });
  });
}

}  // namespace mlaforge::cli

// mlaforge convert MODEL OUT: TransMLA conversion of a GQA/MHA model into a DeepSeek-V3-format MLA model.
#include <sys/resource.h>

#include <chrono>
#include <iostream>

#include "cli/common.h"
#include "convert/kv_budget.h"
#include "convert/pipeline.h"
#include "convert/transmla.h"
#include "core/error.h"
#include "core/log.h"
#include "data/dataset.h"
#include "data/text.h"
#include "data/tokenizer.h"
#include "model/tensor_io.h"
#include "trainer/evaluate.h"

namespace mlaforge::cli {
namespace {

struct ConvertCommandOptions {
  ModelOptions model;
  std::string out;
  ConvertOptions convert;
  std::string calib;
  std::string calib_column = "text";
  std::string eval_column = "text";
  size_t calib_docs = 128;
  size_t calib_skip = 0;
  int64_t calib_len = 256;
  std::string eval;
  size_t eval_docs = 0;
  int64_t eval_len = 512;
  std::string mode = "exact";
  bool one_pass = false;
  std::string freqfold = "0";
  int64_t kv_budget = 0;
  std::string dtype = "auto";
  double shard_gb = 2;
};

// Documents [skip, skip + count) of a text file (blank-line separated), JSONL/JSON, Parquet file or
// dataset folder (`column`, or the conversations' text).
std::vector<std::string> read_slice(const std::string& path, const std::string& column, size_t skip, size_t count) {
  auto docs = read_text_documents(path, column);
  MLA_CHECK(docs.size() > skip, path, ": only ", docs.size(), " documents, cannot skip ", skip);
  const size_t end = count > 0 ? std::min(docs.size(), skip + count) : docs.size();
  return std::vector<std::string>(docs.begin() + static_cast<std::ptrdiff_t>(skip),
                                  docs.begin() + static_cast<std::ptrdiff_t>(end));
}

}  // namespace

void register_convert(CLI::App& app) {
  auto o = std::make_shared<ConvertCommandOptions>();
  auto* cmd = app.add_subcommand("convert", "Convert a GQA/MHA model into MLA (TransMLA): DeepSeek-V3 format, or for gemma2/mixtral the family's own with MLA attention");
  add_model_options(*cmd, o->model);
  cmd->add_option("out", o->out, "output folder (Hugging Face layout)")->required();
  cmd->add_option("--kv-lora-rank", o->convert.kv_lora_rank, "latent rank R (capped at 2 n_kv d - r)")->capture_default_str();
  cmd->add_option("--rope-dim", o->convert.rope_dim, "decoupled rope key width r (0: min(64, head_dim))")->capture_default_str();
  cmd->add_option("--freqfold", o->freqfold,
                  "adjacent RoPE frequencies per RoRoPE fold: a number (0: head_dim / r) or 'auto' (searched on a "
                  "held-out quarter of the calibration documents)")
      ->capture_default_str();
  cmd->add_option("--q-lora-rank", o->convert.q_lora_rank,
                  "compress the query by PCA to this rank (0: none; written as q_lora_rank + 1, see the anchor)")
      ->capture_default_str();
  cmd->add_option("--calib", o->calib,
                  "calibration documents: a text file (blank-line separated), JSONL/JSON, a Parquet file or a Hugging "
                  "Face dataset folder")
      ->required();
  cmd->add_option("--calib-column", o->calib_column, "text column of a JSONL/Parquet calibration set")->capture_default_str();
  cmd->add_option("--eval-column", o->eval_column, "text column of a JSONL/Parquet evaluation set")->capture_default_str();
  cmd->add_option("--calib-docs", o->calib_docs, "calibration documents")->capture_default_str();
  cmd->add_option("--calib-skip", o->calib_skip, "skip the first N documents of the calibration file")->capture_default_str();
  cmd->add_option("--calib-len", o->calib_len, "tokens per calibration document, BOS included")->capture_default_str();
  cmd->add_option("--eval", o->eval, "held-out text: perplexity before and after");
  cmd->add_option("--eval-docs", o->eval_docs, "evaluate the first N documents (0: all)");
  cmd->add_option("--eval-len", o->eval_len, "tokens per evaluation document")->capture_default_str();
  cmd->add_option("--mode", o->mode,
                  "exact: no latent norm (mlaforge engine only, function-preserving at full rank); deployable: "
                  "kv_a_layernorm applied as stock DeepSeek engines do, undone by one anchor latent dimension (+1 KV value); "
                  "not for gemma2/mixtral, which keep their family with MLA attention (exact only); portable: no "
                  "anchor and no biases, for engines that build DeepSeek-V3 without them (vLLM, SGLang), latent norm "
                  "weight fitted to the calibration latents (approximate: see the evaluation)")
      ->check(CLI::IsMember({"exact", "deployable", "portable"}))
      ->capture_default_str();
  cmd->add_flag("--one-pass", o->one_pass,
                "calibrate every layer on the original model's activations (default: sequentially, layer i on the "
                "outputs of the converted layers before it)");
  cmd->add_option("--kv-budget", o->kv_budget,
                  "mean latent rank per layer, allocated per layer from the calibration spectra (exact mode; "
                  "overrides --kv-lora-rank; 0: one rank for all)")
      ->capture_default_str();
  cmd->add_option("--save-dtype", o->dtype, "dtype of the written weights: auto (the source's), float32, bfloat16, float16")
      ->capture_default_str();
  cmd->add_option("--shard-size", o->shard_gb, "largest safetensors shard, GiB")->capture_default_str();
  cmd->add_flag("--no-balance", [o](int64_t) { o->convert.balance_kv = false; }, "skip the BKV key/value balancing");
  cmd->add_option("--pca-metric", o->convert.pca_metric,
                  "metric of the joint K/V PCA: balanced (TransMLA's BKV) or attention (key errors weighted by the "
                  "queries, value errors by o_proj)")
      ->check(CLI::IsMember({"balanced", "attention"}))
      ->capture_default_str();
  cmd->add_flag("--no-refit", [o](int64_t) { o->convert.refit_values = o->convert.refit_output = false; },
                "skip the output-aware least-squares refits of the value up-projection and o_proj (below full rank)");
  cmd->add_flag("--no-refit-output", [o](int64_t) { o->convert.refit_output = false; },
                "skip the o_proj refit only");
  cmd->add_flag("--refit-drift", [o](int64_t) { o->convert.refit_drift = true; },
                "fit o_proj to the original model's residual stream after the layer (taking back the drift of the "
                "layers before it) instead of the original attention's output on the same input (sequential only)");
  cmd->add_option("--rope-select", o->convert.rope_select,
                  "which key components keep RoPE: query (by score energy: key statistics weighted by the matching "
                  "query statistics) or key (by key energy alone: TransMLA's RoRoPE)")
      ->check(CLI::IsMember({"query", "key"}))
      ->capture_default_str();
  cmd->add_flag("--json", global_options().json, "machine-readable output");
  cmd->callback([o] {
    run_command([&] {
      const auto start = std::chrono::steady_clock::now();
      auto since = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(); };
      LoadOptions load;
      load.tokenizer_path = o->model.tokenizer;
      load.lazy_weights = true;  // Hugging Face folders are streamed layer by layer, never loaded whole
      ModelSource src = load_model_source(o->model.model, load);
      MLA_CHECK(src.tokenizer != nullptr, o->model.model, ": no tokenizer found; pass --tokenizer");
      check_convertible(src.config);
      if (o->mode == "deployable") check_deployable(src.config);  // before any calibration work
      if (o->mode == "portable") check_portable(src.config, o->convert);
      WeightReader weights(src);

      PipelineOptions po;
      po.convert = o->convert;
      po.sequential = !o->one_pass;
      po.deployable = o->mode == "deployable";
      po.portable = o->mode == "portable";
      po.device = parse_device(o->model.device);
      po.out_dir = o->out;
      po.max_shard_bytes = static_cast<uint64_t>(o->shard_gb * (1ull << 30));
      po.verify_engine = true;
      po.progress = !global_options().json;
      const std::string dtype = o->dtype == "auto" ? src.config.torch_dtype : o->dtype;
      po.out_dtype = parse_torch_dtype(dtype);

      auto calib_text = read_slice(o->calib, o->calib_column, o->calib_skip, o->calib_docs);
      auto calib = tokenize_documents(*src.tokenizer, src.config, calib_text, o->calib_len);
      log::info("tokenized ", calib.size(), " calibration documents (", since(), " s)");
      std::vector<std::vector<int64_t>> eval_tokens;
      if (!o->eval.empty()) {
        auto eval_text = read_slice(o->eval, o->eval_column, 0, o->eval_docs);
        eval_tokens = tokenize_documents(*src.tokenizer, src.config, eval_text, o->eval_len);
      }
      nlohmann::json freqfold_trials;
      if (o->freqfold == "auto") {
        po.convert.freqfold = search_freqfold(src.config, weights, calib, po.convert, po.device, &freqfold_trials);
        log::info("freqfold auto: chose ", po.convert.freqfold, " (", since(), " s)");
      } else {
        try {
          po.convert.freqfold = std::stoll(o->freqfold);
        } catch (const std::exception&) {
          fail("--freqfold: expected a number or 'auto', got '", o->freqfold, "'");
        }
      }
      if (o->kv_budget > 0) {
        MLA_CHECK(!po.deployable && !po.portable, "--kv-budget gives every layer its own latent rank, which stock DeepSeek engines "
                                  "cannot load: use it with --mode exact");
        po.layer_ranks = plan_kv_budget(src.config, weights, calib, po, o->kv_budget);
        log::info("planned the KV budget (", since(), " s)");
      }
      PipelineResult run = convert_streaming(src.config, weights, calib, eval_tokens, po);
      const ConvertResult& res = run.conversion;
      write_model_metadata(o->out, res.config_json, src);
      log::info("converted and wrote ", o->out, " (", since(), " s)");
      const int64_t calibration_tokens = res.config_json["mlaforge_conversion"]["calibration_tokens"].get<int64_t>();
      const double engine_diff = run.engine_max_diff;

      nlohmann::json j;
      j["model"] = o->model.model;
      j["out"] = o->out;
      j["mode"] = res.config_json["mlaforge_conversion"]["mode"];
      j["kv_lora_rank"] = res.config.kv_lora_rank;
      j["qk_rope_head_dim"] = res.config.qk_rope_head_dim;
      j["freqfold"] = res.config_json["mlaforge_conversion"]["freqfold"];
      j["calibration_tokens"] = calibration_tokens;
      j["dtype"] = dtype;
      j["files"] = run.files.files;
      j["bytes_written"] = run.files.total_bytes;
      if (!po.layer_ranks.empty()) j["kv_lora_ranks"] = po.layer_ranks;
      if (!freqfold_trials.is_null()) j["freqfold_search"] = freqfold_trials;
      j["calibration"] = o->one_pass ? "one pass" : "sequential";
      j["engine_check_max_rel_diff"] = engine_diff;
      int64_t before = 0, after = 0;
      nlohmann::json layers = nlohmann::json::array();
      for (size_t i = 0; i < res.layers.size(); ++i) {
        const auto& l = res.layers[i];
        before += l.kv_values_before;
        after += l.kv_values_after;
        layers.push_back({{"layer", i},
                          {"kv_values_before", l.kv_values_before},
                          {"kv_values_after", l.kv_values_after},
                          {"rope_energy", l.rope_energy},
                          {"pca_energy", l.pca_energy},
                          {"kv_balance", l.kv_balance},
                          {"value_error_before", l.value_error_before},
                          {"value_error_after", l.value_error_after},
                          {"output_error_before", l.output_error_before},
                          {"output_error_after", l.output_error_after}});
      }
      j["layers"] = layers;
      j["kv_values_per_token_before"] = before;
      j["kv_values_per_token_after"] = after;
      j["kv_bytes_per_token_bf16_before"] = 2 * before;
      j["kv_bytes_per_token_bf16_after"] = 2 * after;
      if (run.evaluated) {
        j["eval"] = {{"text", o->eval},
                     {"documents", run.before.documents},
                     {"tokens", run.before.tokens},
                     {"ppl_before", run.before.perplexity},
                     {"ppl_after", run.after.perplexity},
                     {"nll_before", run.before.mean_nll},
                     {"nll_after", run.after.mean_nll}};
      }
      j["seconds"] = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      struct rusage usage {};
      getrusage(RUSAGE_SELF, &usage);
      j["peak_rss_bytes"] = static_cast<int64_t>(usage.ru_maxrss) * 1024;
      if (global_options().json) {
        print_json(j);
        return;
      }
      std::printf("wrote %s (%s)\n", o->out.c_str(), j["mode"].get<std::string>().c_str());
      std::printf("kv_lora_rank %lld, rope dim %lld, freqfold %lld, %lld calibration tokens\n",
                  static_cast<long long>(res.config.kv_lora_rank), static_cast<long long>(res.config.qk_rope_head_dim),
                  static_cast<long long>(j["freqfold"].get<int64_t>()), static_cast<long long>(calibration_tokens));
      // Refit columns: relative calibration error of the head outputs (W_UV) and of the attention output
      // (o_proj), before -> after the least-squares refit (0 -> 0: not refitted, e.g. at full rank).
      std::printf("%5s %10s %10s %12s %12s %8s %15s %15s\n", "layer", "KV before", "KV after", "RoPE energy",
                  "PCA energy", "balance", "W_UV refit", "o_proj refit");
      for (size_t i = 0; i < res.layers.size(); ++i) {
        const auto& l = res.layers[i];
        std::printf("%5zu %10lld %10lld %11.2f%% %11.2f%% %8.3f %7.4f->%.4f %7.4f->%.4f\n", i,
                    static_cast<long long>(l.kv_values_before), static_cast<long long>(l.kv_values_after),
                    100 * l.rope_energy, 100 * l.pca_energy, l.kv_balance, l.value_error_before, l.value_error_after,
                    l.output_error_before, l.output_error_after);
      }
      std::printf("total KV values/token %lld -> %lld (%s -> %s per token in bf16)\n", static_cast<long long>(before),
                  static_cast<long long>(after), human_bytes(2.0 * before).c_str(), human_bytes(2.0 * after).c_str());
      std::printf("time %.1f s, peak RSS %s\n", j["seconds"].get<double>(),
                  human_bytes(static_cast<double>(j["peak_rss_bytes"].get<int64_t>())).c_str());
      if (j.contains("eval"))
        std::printf("perplexity %.4f -> %.4f on %lld tokens\n", j["eval"]["ppl_before"].get<double>(),
                    j["eval"]["ppl_after"].get<double>(), static_cast<long long>(j["eval"]["tokens"].get<int64_t>()));
    });
  });
}

}  // namespace mlaforge::cli

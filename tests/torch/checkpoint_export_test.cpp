// `mlaforge export` (trainer/checkpoint_export.h) on synthetic checkpoints: the parameter order the
// fingerprint needs equals a real Decoder's for every family; a checkpoint split over two rank files plus a
// bf16 base model give a folder holding exactly the trained tensors (cast) and the base model's others,
// sharded with an index; the errors (wrong order = wrong fingerprint, shape mismatch, output over the base
// model, missing model_path); byte sizes. The end-to-end test with real training runs and transformers is
// tests/cli/export_test.sh.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "core/mmap_file.h"
#include "tests/torch/trainer_test_util.h"
#include "trainer/checkpoint_export.h"
#include "trainer/checkpoint_store.h"
#include "trainer/train_checkpoint.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace mlaforge {
namespace {

template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

#define EXPECT_HAS(haystack, needle) EXPECT_NE(std::string(haystack).find(needle), std::string::npos) << (haystack)

std::vector<std::string> decoder_names(const ModelConfig& config) {
  Decoder model(config);
  std::vector<std::string> names;
  for (const auto& p : model->named_parameters()) names.push_back(p.key());
  return names;
}

ModelConfig config_from(json j, const std::string& name) { return ModelConfig::from_json(j, name); }

TEST(CheckpointExport, ParameterOrderIsTheDecoders) {
  json biased = {{"model_type", "llama"},   {"vocab_size", 96},          {"hidden_size", 32},
                 {"intermediate_size", 64}, {"num_hidden_layers", 3},    {"num_attention_heads", 4},
                 {"num_key_value_heads", 2}, {"attention_bias", true},   {"mlp_bias", true}};
  json qwen2 = {{"model_type", "qwen2"},    {"vocab_size", 96},         {"hidden_size", 32},
                {"intermediate_size", 64},  {"num_hidden_layers", 2},   {"num_attention_heads", 4},
                {"num_key_value_heads", 2}, {"tie_word_embeddings", true}};
  json gemma2 = {{"model_type", "gemma2"},    {"vocab_size", 96},        {"hidden_size", 32},
                 {"intermediate_size", 64},   {"num_hidden_layers", 2},  {"num_attention_heads", 4},
                 {"num_key_value_heads", 2},  {"head_dim", 8},           {"query_pre_attn_scalar", 8},
                 {"sliding_window", 16},      {"hidden_act", "gelu_pytorch_tanh"}};
  const ModelConfig mla_plain = testing::tiny_mla_config(false, 3);
  json mla_bias_json = mla_plain.raw;
  mla_bias_json["attention_bias"] = true;
  mla_bias_json["q_lora_rank"] = 12;
  const std::vector<std::pair<std::string, ModelConfig>> configs = {
      {"llama", testing::tiny_llama_config(2, false)},
      {"llama tied", testing::tiny_llama_config(3, true)},
      {"llama biases", config_from(biased, "biased")},
      {"qwen2", config_from(qwen2, "qwen2")},
      {"gemma2", config_from(gemma2, "gemma2")},
      {"mixtral", testing::tiny_mixtral_config()},
      {"mla", mla_plain},
      {"mla q_lora", testing::tiny_mla_config(true, 2)},
      {"mla q_lora + bias", config_from(mla_bias_json, "mla-bias")},
  };
  for (const auto& [label, config] : configs) {
    const std::vector<std::string> order = model_parameter_order(config), want = decoder_names(config);
    EXPECT_EQ(order, want) << label;
    // And it is not the weight table's order (which is why the twin is built at all).
    std::vector<std::string> table;
    for (const WeightName& w : expand_weight_names(config)) table.push_back(w.ours);
    EXPECT_EQ(table.size(), want.size()) << label;
    EXPECT_NE(table, want) << label;
  }
}

TEST(CheckpointExport, ByteSizes) {
  EXPECT_EQ(parse_byte_size("5GB"), 5'000'000'000ull);
  EXPECT_EQ(parse_byte_size("500MB"), 500'000'000ull);
  EXPECT_EQ(parse_byte_size("100KB"), 100'000ull);
  EXPECT_EQ(parse_byte_size("2GiB"), 2ull << 30);
  EXPECT_EQ(parse_byte_size(" 64 kib "), 65536ull);
  EXPECT_EQ(parse_byte_size("1.5gb"), 1'500'000'000ull);
  EXPECT_EQ(parse_byte_size("123"), 123ull);
  EXPECT_EQ(parse_byte_size("7B"), 7ull);
  for (const char* bad : {"", "GB", "5 parsecs", "-1GB", "0", "1.2.3MB", ".", "0.1"})
    EXPECT_HAS(error_of([&] { parse_byte_size(bad, "--shard-size"); }), "--shard-size: '") << bad;
}

// A bf16 Hugging Face folder of a tiny llama and a checkpoint of three of its tensors.
struct Fixture {
  std::string root = testing::make_temp_dir("export");
  std::string model_dir = root + "/base", run = root + "/run";
  ModelConfig config;
  StateDict base;                          // HF names, bf16
  std::map<std::string, torch::Tensor> trained;  // ours -> float32 global tensor
  std::vector<std::string> trained_order;  // the Decoder's order

  Fixture() {
    json j = testing::tiny_llama_config(2, false).raw;
    j["torch_dtype"] = "bfloat16";
    config = ModelConfig::from_json(j, "tiny");
    Decoder model = testing::random_decoder(config, 5);
    for (auto& [name, t] : export_weights(*model)) base[name] = t.to(torch::kBFloat16).contiguous();
    fs::create_directories(model_dir);
    save_state_dict(model_dir, base);
    std::ofstream(model_dir + "/config.json") << j.dump(2);
    std::ofstream(model_dir + "/tokenizer_config.json") << json{{"chat_template", "{{ messages }}"}}.dump();
    torch::manual_seed(11);
    for (const std::string& name : decoder_names(config)) {
      if (name != "layers.1.attn.wq.weight" && name != "lm_head.weight" && name != "layers.0.mlp_norm.weight") continue;
      trained_order.push_back(name);
      const auto hf = ours_to_hf(config, name);
      trained[name] = torch::randn(base.at(*hf).sizes(), torch::kFloat32);
    }
  }

  // Two "ranks", each holding half the rows of every trained tensor (as tensor parallelism would).
  std::string write_checkpoint(int64_t step, const std::string& fingerprint, json state = json::object()) {
    const std::string name = step_dir_name(step), dir = prepare_step_dir(run, name);
    std::vector<Slab> rank0, rank1;
    for (const auto& [n, t] : trained) {
      const int64_t half = t.size(0) / 2;
      std::vector<int64_t> o0(t.dim(), 0), o1(t.dim(), 0);
      o1[0] = half;
      rank0.push_back({"param/" + n, t.narrow(0, 0, half), t.sizes().vec(), o0});
      rank1.push_back({"param/" + n, t.narrow(0, half, t.size(0) - half), t.sizes().vec(), o1});
      rank0.push_back(Slab::whole("exp_avg/" + n, torch::zeros_like(t)));
    }
    if (!state.contains("model_path")) state["model_path"] = model_dir;
    state["step"] = step;
    std::vector<FileRecord> records = {write_rank_shards(dir, 0, 2, rank0), write_rank_shards(dir, 1, 2, rank1),
                                       write_json_file(dir, kTrainingStateFile, state)};
    commit_checkpoint(run, name, step, records, fingerprint);
    return dir;
  }
};

bool bitwise_equal(const torch::Tensor& a, const torch::Tensor& b) {
  return a.scalar_type() == b.scalar_type() && a.sizes() == b.sizes() &&
         std::memcmp(a.contiguous().data_ptr(), b.contiguous().data_ptr(), a.nbytes()) == 0;
}

TEST(CheckpointExport, TrainedTensorsFromTheCheckpointTheRestFromTheModel) {
  Fixture f;
  f.write_checkpoint(3, model_fingerprint(f.config, f.trained_order));
  CheckpointExportOptions o;
  o.checkpoint = f.run;  // a run folder: its newest checkpoint
  o.out = f.root + "/out";
  o.max_shard_bytes = 4000;
  const CheckpointExportSummary s = export_checkpoint(o);
  EXPECT_EQ(s.step, 3);
  EXPECT_TRUE(s.fingerprint_checked);
  EXPECT_EQ(s.dtype, "bfloat16");  // auto: the base config's torch_dtype
  EXPECT_EQ(s.from_checkpoint, 3);
  EXPECT_EQ(s.tensors, static_cast<int64_t>(f.base.size()));
  EXPECT_EQ(s.from_model, s.tensors - 3);
  ASSERT_GT(s.weight_files.size(), 2u);
  EXPECT_EQ(s.weight_files.front(), "model-00001-of-" + std::string(5 - std::to_string(s.weight_files.size()).size(), '0') +
                                        std::to_string(s.weight_files.size()) + ".safetensors");
  EXPECT_TRUE(fs::exists(o.out + "/model.safetensors.index.json"));
  EXPECT_FALSE(fs::exists(o.out + "/model.safetensors"));

  const ModelSource out = load_model_source(o.out);
  EXPECT_EQ(out.config.raw, f.config.raw);
  ASSERT_EQ(out.weights.size(), f.base.size());
  for (const auto& [hf, t] : out.weights) {
    const auto ours = hf_to_ours(f.config, hf);
    ASSERT_TRUE(ours.has_value()) << hf;
    const torch::Tensor want = f.trained.count(*ours) ? f.trained.at(*ours).to(torch::kBFloat16) : f.base.at(hf);
    EXPECT_TRUE(bitwise_equal(t, want)) << hf;
  }
  // No generation_config.json in the source: one from the config (which has no token ids here).
  EXPECT_EQ(json::parse(read_text_file(o.out + "/generation_config.json")), json({{"_from_model_config", true}}));
  // The chat template travels in the copied tokenizer_config.json (no separate file then).
  EXPECT_EQ(json::parse(read_text_file(o.out + "/tokenizer_config.json"))["chat_template"], "{{ messages }}");
  EXPECT_FALSE(fs::exists(o.out + "/chat_template.jinja"));
  EXPECT_NE(std::find(s.files.begin(), s.files.end(), "tokenizer_config.json"), s.files.end());

  // The source's own generation_config.json is copied, not replaced.
  std::ofstream(f.model_dir + "/generation_config.json") << R"({"do_sample": true, "temperature": 0.6})";

  // float32 output: the trained tensors exactly as stored; config.json says float32.
  o.out = f.root + "/out32";
  o.dtype = "float32";
  o.max_shard_bytes = 5'000'000'000;
  const CheckpointExportSummary s32 = export_checkpoint(o);
  EXPECT_EQ(s32.weight_files, std::vector<std::string>{"model.safetensors"});
  EXPECT_EQ(json::parse(read_text_file(o.out + "/generation_config.json")),
            json({{"do_sample", true}, {"temperature", 0.6}}));
  const ModelSource out32 = load_model_source(o.out);
  EXPECT_EQ(out32.config.torch_dtype, "float32");
  EXPECT_TRUE(bitwise_equal(out32.weights.at("model.layers.1.self_attn.q_proj.weight"),
                            f.trained.at("layers.1.attn.wq.weight")));
  EXPECT_TRUE(bitwise_equal(out32.weights.at("model.embed_tokens.weight"),
                            f.base.at("model.embed_tokens.weight").to(torch::kFloat32)));
}

TEST(CheckpointExport, Errors) {
  Fixture f;
  // The names in another order than the optimizer's give another fingerprint: caught.
  std::vector<std::string> reversed(f.trained_order.rbegin(), f.trained_order.rend());
  const std::string dir = f.write_checkpoint(2, model_fingerprint(f.config, reversed));
  CheckpointExportOptions o;
  o.checkpoint = dir;
  o.out = f.root + "/out";
  EXPECT_HAS(error_of([&] { export_checkpoint(o); }), "model fingerprint");
  o.ignore_fingerprint = true;
  EXPECT_FALSE(export_checkpoint(o).fingerprint_checked);
  o.ignore_fingerprint = false;

  // Writing over the base model is refused.
  const std::string good = f.write_checkpoint(4, model_fingerprint(f.config, f.trained_order));
  o.checkpoint = good;
  o.out = f.model_dir;
  EXPECT_HAS(error_of([&] { export_checkpoint(o); }), "is the base model's or the checkpoint's folder");

  // A tensor of another shape than the model's.
  o.out = f.root + "/out2";
  f.trained["layers.1.attn.wq.weight"] = torch::zeros({5, 32});
  const std::string wrong = f.write_checkpoint(6, model_fingerprint(f.config, f.trained_order));
  o.checkpoint = wrong;
  EXPECT_HAS(error_of([&] { export_checkpoint(o); }),
             "param/layers.1.attn.wq.weight has shape [5, 32] but " + f.model_dir +
                 "'s model.layers.1.self_attn.q_proj.weight has [32, 32]");

  // No model_path in the state, and none given.
  const std::string bare = f.write_checkpoint(7, "", {{"model_path", ""}});
  o.checkpoint = bare;
  EXPECT_HAS(error_of([&] { export_checkpoint(o); }), "training_state.json: no \"model_path\"");
  // A model folder instead of a checkpoint.
  o.checkpoint = f.model_dir;
  EXPECT_HAS(error_of([&] { export_checkpoint(o); }), "a model folder (config.json), not a training checkpoint");
}

}  // namespace
}  // namespace mlaforge

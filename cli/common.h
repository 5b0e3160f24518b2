#pragma once
// Options and helpers shared by the subcommands.
#include <CLI/CLI.hpp>
#include <torch/torch.h>

#include <nlohmann/json.hpp>
#include <string>

#include "model/checkpoint.h"

namespace mlaforge::cli {

struct GlobalOptions {
  int threads = 0;  // 0: from the machine
  std::string log_level = "info";
  bool json = false;
};
GlobalOptions& global_options();

struct ModelOptions {
  std::string model;
  std::string tokenizer;
  std::string dtype = "float32";
  std::string device = "cpu";
};
// Adds MODEL (positional), --tokenizer, --dtype, --device to a subcommand.
void add_model_options(CLI::App& cmd, ModelOptions& options);
torch::Device parse_device(const std::string& name);

// Runs a subcommand body: sets threads and logging, and turns any failure into one line on stderr and
// a non-zero exit (never a crash).
void run_command(const std::function<void()>& body);

// Prints a JSON document on stdout (for --json).
void print_json(const nlohmann::json& j);
std::string human_bytes(double bytes);
std::string human_count(double count);

// Subcommands (one file each).
void register_inspect(CLI::App& app);
void register_eval(CLI::App& app);
void register_generate(CLI::App& app);
void register_convert(CLI::App& app);
void register_validate(CLI::App& app);
void register_train(CLI::App& app);
void register_export(CLI::App& app);
void register_chat(CLI::App& app);

}  // namespace mlaforge::cli

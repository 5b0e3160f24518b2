// mlaforge: convert GQA models to Multi-head Latent Attention, fine-tune, export, serve.
#include <CLI/CLI.hpp>
#include <torch/torch.h>

#include <iostream>

#include "cli/common.h"
#include "core/error.h"
#include "core/log.h"
#include "core/threads.h"

int main(int argc, char** argv) {
  using namespace mlaforge;
  CLI::App app{"mlaforge: turn GQA language models into Multi-head Latent Attention models and fine-tune them"};
  app.require_subcommand(1);
  auto& g = cli::global_options();
  app.add_option("--threads", g.threads, "CPU threads (default: the CPUs this process may use)");
  app.add_option("--log-level", g.log_level, "debug, info, warn, error, off")->capture_default_str();
  cli::register_inspect(app);
  cli::register_eval(app);
  cli::register_generate(app);
  cli::register_chat(app);
  cli::register_convert(app);
  cli::register_validate(app);
  cli::register_train(app);
  cli::register_export(app);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  return 0;
}

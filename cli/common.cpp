#include "cli/common.h"

#include <cstdio>
#include <iostream>

#include "core/error.h"
#include "core/log.h"
#include "core/threads.h"
#include "parallel/communicator.h"

namespace mlaforge::cli {

GlobalOptions& global_options() {
  static GlobalOptions options;
  return options;
}

void add_model_options(CLI::App& cmd, ModelOptions& o) {
  cmd.add_option("model", o.model, "Hugging Face folder, .gguf file, or llama2.c .bin checkpoint")->required();
  cmd.add_option("--tokenizer", o.tokenizer,
                 "tokenizer file or folder (tokenizer.json, SentencePiece .model, llama2.c tokenizer.bin)");
  cmd.add_option("--dtype", o.dtype, "compute dtype: float32, bfloat16, float16")->capture_default_str();
  cmd.add_option("--device", o.device, "cpu, cuda or cuda:N")->capture_default_str();
}

torch::Device parse_device(const std::string& name) {
  if (name == "cpu") return torch::kCPU;
  if (name.rfind("cuda", 0) == 0) {
    MLA_CHECK(torch::cuda::is_available(), "--device ", name, ": CUDA is not available on this machine");
    return torch::Device(name);
  }
  fail("--device: unknown device '", name, "' (expected cpu, cuda or cuda:N)");
}

void print_json(const nlohmann::json& j) { std::cout << j.dump(2) << std::endl; }

std::string human_bytes(double bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (bytes >= 1024 && u < 4) {
    bytes /= 1024;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof(buf), u == 0 ? "%.0f %s" : "%.2f %s", bytes, units[u]);
  return buf;
}

std::string human_count(double count) {
  const char* units[] = {"", "K", "M", "B", "T"};
  int u = 0;
  while (count >= 1000 && u < 4) {
    count /= 1000;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof(buf), u == 0 ? "%.0f%s" : "%.2f%s", count, units[u]);
  return buf;
}


// Every subcommand runs through here: one place sets threads and logging, and turns any failure into
// one clear line and a non-zero exit instead of a crash.
void run_command(const std::function<void()>& body) {
  int rc = 1;
  try {
    auto& g = global_options();
    log::set_level(log::parse_level(g.log_level));
    const int threads = g.threads > 0 ? g.threads : default_num_threads();
    torch::set_num_threads(threads);
    body();
    rc = 0;
  } catch (const Error& e) {
    std::cerr << "mlaforge: error: " << e.what() << std::endl;
  } catch (const c10::Error& e) {
    std::cerr << "mlaforge: error: " << e.what_without_backtrace() << std::endl;
  } catch (const std::exception& e) {
    std::cerr << "mlaforge: error: " << e.what() << std::endl;
  }
  // In a job of several processes a failing rank ends the whole job (MPI_Abort) rather than leaving the
  // others waiting in their next collective until the timeout.
  if (rc != 0 && parallel::detect_process_env().world_size > 1) parallel::abort_job(rc);
  // CLI11 turns RuntimeError into this exit code without printing anything more.
  if (rc != 0) throw CLI::RuntimeError(rc);
}

}  // namespace mlaforge::cli

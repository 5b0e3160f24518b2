#include "trainer/train_checkpoint.h"

#include <ATen/CPUGeneratorImpl.h>

#include <chrono>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <mutex>

#include "core/error.h"
#include "core/log.h"
#include "model/weight_names.h"
#include "parallel/tensor_parallel.h"
#include "parallel/zero.h"
#include "trainer/checksum.h"

namespace mlaforge {
namespace fs = std::filesystem;

namespace {

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

}  // namespace

void checkpoint_fault_point(const char* point, int64_t step, int rank) {
  static const std::string spec = [] {
    const char* env = std::getenv("MLAFORGE_FAULT");
    return std::string(env ? env : "");
  }();
  if (spec.empty()) return;
  std::string want = std::string(point) + ":" + std::to_string(step);
  const auto at = spec.find('@');
  if (spec.substr(0, at) != want) return;
  if (at != std::string::npos && spec.substr(at + 1) != std::to_string(rank)) return;
  log::warn("MLAFORGE_FAULT=", spec, ": rank ", rank, " kills itself at ", want);
  std::fflush(nullptr);
  std::raise(SIGKILL);
}

namespace {

std::string join_shape(const std::vector<int64_t>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
  return s + "]";
}

}  // namespace

std::string model_fingerprint(const ModelConfig& config, const std::vector<std::string>& trainable_names) {
  std::string text = config.raw.dump();
  for (const std::string& name : trainable_names) text += "\n" + name;
  return crc32c_string(crc32c(text.data(), text.size()));
}

// One trainable tensor as this rank sees it: where its local (TP) tensor lies in the global one, and the
// rows [row_begin, row_begin + rows) of the local tensor whose optimizer state this rank holds (all of
// them without ZeRO), vocabulary padding excluded.
struct TrainCheckpointer::Owned {
  std::string name;
  parallel::GlobalRegion local;  // the local tensor's real part in the global tensor
  int64_t row_begin = 0, rows = 0;
  bool writes = false;           // this rank stores the tensor's own rows (see the header)

  // The global region of local rows [row_begin, row_begin + rows).
  std::vector<int64_t> offsets() const {
    std::vector<int64_t> o = local.offsets;
    o[0] += row_begin;
    return o;
  }
  std::vector<int64_t> sizes() const {
    std::vector<int64_t> s = local.sizes;
    s[0] = rows;
    return s;
  }
};

TrainCheckpointer::TrainCheckpointer(TrainCheckpointOptions options, const ModelConfig& full_config, AdamW& optimizer,
                                     std::vector<torch::Tensor> trained, parallel::ParallelGroups& groups,
                                     torch::Device device)
    : options_(std::move(options)), config_(full_config), optimizer_(optimizer), trained_(std::move(trained)),
      groups_(groups), device_(device) {
  MLA_CHECK(trained_.size() == optimizer_.size(), "checkpoint: ", trained_.size(), " trained tensors for an optimizer of ",
            optimizer_.size());
  std::map<std::string, TpSplit> split;
  for (const WeightName& w : expand_weight_names(config_)) split[w.ours] = w.split;
  const int tp = groups_.tp->size(), tp_rank = groups_.tp_rank();
  for (size_t i = 0; i < optimizer_.size(); ++i) {
    auto o = std::make_shared<Owned>();
    o->name = optimizer_.name(i);
    const auto it = split.find(o->name);
    MLA_CHECK(it != split.end(), "checkpoint: parameter ", o->name, " is not in the weight table");
    MLA_CHECK(trained_[i].dim() >= 1, "checkpoint: parameter ", o->name, " is a scalar");
    o->local = parallel::tp_global_region(config_, it->second, trained_[i].sizes(), tp, tp_rank);
    const auto [begin, end] = optimizer_.shard_rows(i);
    o->row_begin = std::min(begin, o->local.sizes[0]);
    o->rows = std::min(end, o->local.sizes[0]) - o->row_begin;
    o->writes = (optimizer_.sharded() || groups_.dp_rank() == 0) &&
                (it->second != TpSplit::replicated || tp_rank == 0) && o->rows > 0;
    owned_.push_back(std::move(o));
  }
  if (options_.async) writer_ = std::make_unique<AsyncCheckpointWriter>(1);
}

TrainCheckpointer::~TrainCheckpointer() {
  if (writer_) writer_->cancel_pending();
}

std::vector<Slab> TrainCheckpointer::snapshot() const {
  torch::NoGradGuard no_grad;
  // Background writes need copies (training goes on changing the tensors); synchronous ones can write
  // the CPU tensors in place.
  auto host = [&](const torch::Tensor& t) { return options_.async || !t.is_cpu() ? t.to(torch::kCPU, true, true) : t; };
  std::vector<Slab> slabs;
  bool any = false;
  for (const auto& o : owned_) any = any || o->writes;
  const StateDict state = any ? optimizer_.state_dict() : StateDict{};  // CPU copies
  const bool bf16 = optimizer_.options().precision == Precision::bf16_master;
  for (size_t i = 0; i < owned_.size(); ++i) {
    const Owned& o = *owned_[i];
    if (!o.writes) continue;
    // The optimizer's tensors hold rows [shard begin, shard end) of the local tensor; o.rows of them are real.
    const torch::Tensor weight = bf16 ? state.at(o.name + ".master").narrow(0, 0, o.rows)
                                      : host(trained_[i].detach().narrow(0, o.row_begin, o.rows));
    slabs.push_back({"param/" + o.name, weight, o.local.global_shape, o.offsets()});
    for (const char* moment : {"exp_avg", "exp_avg_sq"})
      slabs.push_back({std::string(moment) + "/" + o.name, state.at(o.name + "." + moment).narrow(0, 0, o.rows),
                       o.local.global_shape, o.offsets()});
  }
  const int rank = groups_.world->rank();
  slabs.push_back(Slab::whole(rank_local_name("rng", rank), at::detail::getDefaultCPUGenerator().get_state()));
  return slabs;
}

void TrainCheckpointer::save(int64_t step, const nlohmann::json& state) {
  finish();  // at most one save in flight
  const auto start = Clock::now();
  const int rank = groups_.world->rank(), world = groups_.world->size();
  Pending p{step, step_dir_name(step), {}, start};
  const std::string dir = (fs::path(options_.root) / p.dir_name).string();
  if (rank == 0) prepare_step_dir(options_.root, p.dir_name);
  groups_.world->barrier();  // the folder exists (and reads as incomplete) before anyone writes into it
  std::vector<Slab> slabs = snapshot();
  if (rank == 0) p.records.push_back(write_json_file(dir, kTrainingStateFile, state));
  auto job = [dir, rank, world, step, slabs = std::move(slabs)] {
    FileRecord record = write_rank_shards(dir, rank, world, slabs);
    checkpoint_fault_point("save", step, rank);
    return record;
  };
  if (writer_) {
    writer_->submit(p.dir_name + "/" + rank_file_name(rank, world), std::move(job));
    pending_ = std::move(p);
  } else {
    p.records.push_back(job());
    pending_ = std::move(p);
    commit_pending();
  }
}

void TrainCheckpointer::poll() {
  if (!pending_ || !writer_) return;
  // Every rank must agree that every rank is done before the commit's collectives.
  torch::Tensor done = torch::tensor({writer_->outstanding() == 0 ? int64_t{1} : int64_t{0}}, torch::kInt64).to(device_);
  groups_.world->all_reduce(done, parallel::ReduceOp::sum);
  if (done.cpu().item<int64_t>() == groups_.world->size()) commit_pending();
}

void TrainCheckpointer::finish() {
  if (pending_) commit_pending();
}

void TrainCheckpointer::commit_pending() {
  Pending p = std::move(*pending_);
  pending_.reset();
  if (writer_) {
    for (FileRecord& r : writer_->wait_all()) p.records.push_back(std::move(r));
  }
  const double write_seconds = seconds_since(p.start);
  nlohmann::json mine = nlohmann::json::array();
  for (const FileRecord& r : p.records) mine.push_back(r.to_json());
  const std::vector<std::string> all = parallel::all_gather_strings(*groups_.world, mine.dump(), device_);
  uint64_t bytes = 0;
  if (groups_.world->rank() == 0) {
    std::vector<FileRecord> records;
    for (size_t r = 0; r < all.size(); ++r)
      for (const auto& j : nlohmann::json::parse(all[r]))
        records.push_back(FileRecord::from_json(j, "rank " + std::to_string(r) + "'s checkpoint record"));
    const CheckpointManifest m = commit_checkpoint(options_.root, p.dir_name, p.step, records, options_.fingerprint);
    bytes = m.total_bytes();
    apply_retention(options_.root, options_.keep_last, options_.keep_every);
    log::info("checkpoint ", (fs::path(options_.root) / p.dir_name).string(), ": ", static_cast<double>(bytes) / 1e6,
              " MB in ", seconds_since(p.start), " s (this rank's write ", write_seconds, " s)");
  }
  last_save_seconds_ = write_seconds;
  last_save_bytes_ = bytes;
}

std::optional<nlohmann::json> TrainCheckpointer::resume(const std::string& resume) {
  if (resume == "none") return std::nullopt;
  const bool lead = groups_.world->rank() == 0;
  std::string path;
  if (lead) {
    if (resume == "auto") {
      path = find_resume_checkpoint(options_.root, options_.fingerprint).value_or("");
    } else {
      // An explicit checkpoint: a step folder (verified here: its problems are errors, not fallbacks) or a
      // run folder (its newest complete checkpoint).
      MLA_CHECK(fs::exists(resume), "checkpoint.resume: ", resume, " does not exist");
      if (fs::exists(fs::path(resume) / kManifestFile)) {
        CheckpointReader::open(resume, /*verify_checksums=*/true, options_.fingerprint);
        path = resume;
      } else {
        auto found = find_resume_checkpoint(resume, options_.fingerprint);
        MLA_CHECK(found.has_value(), "checkpoint.resume: ", resume, " holds no complete checkpoint");
        path = *found;
      }
    }
  }
  // Only rank 0 verified the checksums (reading every byte once); the others trust its choice.
  path = parallel::broadcast_string(*groups_.world, path, 0, device_);
  if (path.empty()) return std::nullopt;
  const auto start = Clock::now();
  const CheckpointReader reader = CheckpointReader::open(path, /*verify_checksums=*/false, options_.fingerprint);
  const nlohmann::json state = reader.training_state();
  MLA_CHECK(state.contains("step") && state.contains("optimizer_step") && state.contains("data_position"),
            path, "/", kTrainingStateFile, ": missing step, optimizer_step or data_position");

  torch::NoGradGuard no_grad;
  const bool bf16 = optimizer_.options().precision == Precision::bf16_master;
  auto read_rows = [&](const std::string& name, const Owned& o, int64_t row_begin, int64_t rows, int64_t capacity) {
    // `capacity` local rows (the optimizer's shard or the whole local tensor), `rows` of them real.
    MLA_CHECK(reader.contains(name), path, ": the checkpoint has no tensor ", name);
    const std::vector<int64_t> stored = reader.global_shape(name);
    MLA_CHECK(stored == o.local.global_shape, path, ": ", name, " has global shape ", join_shape(stored),
              ", the model's is ", join_shape(o.local.global_shape));
    std::vector<int64_t> offsets = o.local.offsets, sizes = o.local.sizes;
    offsets[0] += row_begin;
    sizes[0] = rows;
    std::vector<int64_t> shape = o.local.sizes;
    for (size_t d = 1; d < shape.size(); ++d) shape[d] = sizes[d];
    shape[0] = capacity;
    torch::Tensor out = torch::zeros(shape, torch::kFloat32);  // padding rows stay zero
    if (rows > 0) out.narrow(0, 0, rows).copy_(reader.read(name, offsets, sizes, torch::kFloat32));
    return out;
  };
  StateDict opt_state;
  for (size_t i = 0; i < owned_.size(); ++i) {
    const Owned& o = *owned_[i];
    const auto [shard_begin, shard_end] = optimizer_.shard_rows(i);
    const int64_t capacity = shard_end - shard_begin;
    for (const char* moment : {"exp_avg", "exp_avg_sq"})
      opt_state[o.name + "." + moment] = read_rows(std::string(moment) + "/" + o.name, o, o.row_begin, o.rows, capacity);
    if (bf16) {
      opt_state[o.name + ".master"] = read_rows("param/" + o.name, o, o.row_begin, o.rows, capacity);
    } else {
      // The fp32 weight: the whole local tensor (every rank holds it whole, ZeRO or not).
      const torch::Tensor w = read_rows("param/" + o.name, o, 0, o.local.sizes[0], trained_[i].size(0));
      trained_[i].copy_(w.to(trained_[i].device()));
    }
  }
  for (auto& [name, t] : opt_state) t = t.to(device_);
  opt_state["step"] = torch::full({1}, state.at("optimizer_step").get<int64_t>(), torch::kInt64);
  optimizer_.load_state_dict(opt_state);  // bf16: re-casts this rank's rows of the weights
  if (bf16 && optimizer_.sharded()) parallel::all_gather_rows(trained_, *groups_.dp);

  // RNG: restored when this rank's state exists (same world size); otherwise the seed's.
  const std::string rng = rank_local_name("rng", groups_.world->rank());
  const bool same_world = state.value("layout", nlohmann::json::object()).value("world_size", -1) == groups_.world->size();
  if (same_world && reader.contains(rng)) {
    at::Generator generator = at::detail::getDefaultCPUGenerator();  // a handle to the default generator
    std::lock_guard<std::mutex> lock(generator.mutex());
    generator.set_state(reader.read(rng));
  }
  if (lead)
    log::info("resumed from ", path, " (step ", state.at("step").get<int64_t>(), ") in ", seconds_since(start), " s",
              same_world ? "" : "; the layout changed: tensors resharded, RNG from the seed");
  nlohmann::json out = state;
  out["path"] = path;
  return out;
}

}  // namespace mlaforge

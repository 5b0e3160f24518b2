#pragma once
// Internal helpers shared by the communicator backends (not part of the public API): argument checks
// and the pieces of the messages every backend prints, so "rank 1 of 4 (dp group): all_reduce #37
// (float32 x 1048576)" reads the same whichever backend wrote it.
#include "core/error.h"
#include "parallel/communicator.h"

#include <chrono>
#include <cstdint>
#include <string>

namespace mlaforge::parallel::detail {

// Short dtype names as in the recipes and safetensors files: "float32", "bfloat16", "int64", ...
std::string dtype_name(torch::ScalarType type);
// "float32 x 1048576"
std::string describe(const torch::Tensor& tensor);
const char* op_name(ReduceOp op);
// "60 s", "2.5 s", "0.25 s"
std::string format_seconds(std::chrono::milliseconds duration);
// "rank 1 of 4 (dp group)"
std::string who(const Communicator& comm);

// Throws unless every tensor is defined and contiguous; `what` names the collective.
void check_contiguous(const Communicator& comm, const char* what, const torch::Tensor& tensor);
// all_gather: output has size() * input.numel() elements, same dtype and device as input.
void check_gather(const Communicator& comm, const torch::Tensor& input, const torch::Tensor& output);
// reduce_scatter: input has size() * output.numel() elements, same dtype and device as output.
void check_scatter(const Communicator& comm, const torch::Tensor& input, const torch::Tensor& output);
void check_root(const Communicator& comm, int root);
// Whether the bytes of two tensors overlap (an in-place all_gather passes input = its slot of output).
bool overlaps(const torch::Tensor& a, const torch::Tensor& b);
// avg is defined for floating dtypes only (integer division would silently truncate).
void check_reduce_dtype(const Communicator& comm, const char* what, const torch::Tensor& tensor, ReduceOp op);

}  // namespace mlaforge::parallel::detail

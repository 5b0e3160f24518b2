#pragma once
// Precompiled header for every LibTorch translation unit (see CMakeLists.txt).
#include <torch/torch.h>

# The torch-free part of the trainer: recipes (YAML run configurations), compiled into mlaforge_core so
# that `mlaforge validate` logic and its tests need no LibTorch.
target_sources(mlaforge_core PRIVATE
  ${CMAKE_CURRENT_LIST_DIR}/recipe_schema.cpp
  ${CMAKE_CURRENT_LIST_DIR}/recipe_parse.cpp
  ${CMAKE_CURRENT_LIST_DIR}/recipe_emit.cpp
  ${CMAKE_CURRENT_LIST_DIR}/recipe_check.cpp
)
target_link_libraries(mlaforge_core PRIVATE yaml-cpp)
# Run metrics (JSONL, TensorBoard event files, loss-curve PNG, progress line): torch-free too.
target_sources(mlaforge_core PRIVATE
  ${CMAKE_CURRENT_LIST_DIR}/metrics_jsonl.cpp
  ${CMAKE_CURRENT_LIST_DIR}/metrics_log.cpp
  ${CMAKE_CURRENT_LIST_DIR}/metrics_plot.cpp
  ${CMAKE_CURRENT_LIST_DIR}/metrics_png.cpp
  ${CMAKE_CURRENT_LIST_DIR}/metrics_progress.cpp
  ${CMAKE_CURRENT_LIST_DIR}/metrics_raster.cpp
  ${CMAKE_CURRENT_LIST_DIR}/metrics_tfevents.cpp
)
# Training checkpoints, the torch-free part: CRC-32C, manifests / retention / resume choice, background writer.
target_sources(mlaforge_core PRIVATE ${CMAKE_CURRENT_LIST_DIR}/checksum.cpp ${CMAKE_CURRENT_LIST_DIR}/checkpoint_manifest.cpp ${CMAKE_CURRENT_LIST_DIR}/checkpoint_async.cpp)
# Multi-stage runs: completion records (torch-free).
target_sources(mlaforge_core PRIVATE ${CMAKE_CURRENT_LIST_DIR}/stage_record.cpp)
# Paper estimates of a run's GPU memory and speed (`mlaforge validate --estimate`), torch-free.
target_sources(mlaforge_core PRIVATE ${CMAKE_CURRENT_LIST_DIR}/run_estimate.cpp)

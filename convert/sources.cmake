# GQA -> MLA conversion (TransMLA): RoRoPE + FreqFold, BKV-PCA, export to DeepSeek-V3 layout.
target_sources(mlaforge_torch PRIVATE
  ${CMAKE_CURRENT_LIST_DIR}/transmla.cpp
)
target_sources(mlaforge_torch PRIVATE ${CMAKE_CURRENT_LIST_DIR}/../cli/cmd_convert.cpp)
target_sources(mlaforge_torch PRIVATE ${CMAKE_CURRENT_LIST_DIR}/pipeline.cpp)
target_sources(mlaforge_torch PRIVATE ${CMAKE_CURRENT_LIST_DIR}/kv_budget.cpp)
target_sources(mlaforge_torch PRIVATE ${CMAKE_CURRENT_LIST_DIR}/output_refit.cpp)

target_sources(mlaforge_core PRIVATE ${CMAKE_CURRENT_LIST_DIR}/config.cpp)
target_sources(mlaforge_core PRIVATE ${CMAKE_CURRENT_LIST_DIR}/safetensors.cpp)
target_sources(mlaforge_core PRIVATE ${CMAKE_CURRENT_LIST_DIR}/weight_names.cpp)
target_sources(mlaforge_core PRIVATE ${CMAKE_CURRENT_LIST_DIR}/gguf.cpp ${CMAKE_CURRENT_LIST_DIR}/llama2c.cpp)
# Dequantisation must match ggml / the gguf package bit for bit: no fused multiply-add contraction.
set_source_files_properties(${CMAKE_CURRENT_LIST_DIR}/gguf.cpp PROPERTIES COMPILE_OPTIONS -ffp-contract=off)

target_sources(mlaforge_torch PRIVATE
  ${CMAKE_CURRENT_LIST_DIR}/attention.cpp
  ${CMAKE_CURRENT_LIST_DIR}/checkpoint.cpp
  ${CMAKE_CURRENT_LIST_DIR}/decoder.cpp
  ${CMAKE_CURRENT_LIST_DIR}/kv_cache.cpp
  ${CMAKE_CURRENT_LIST_DIR}/layers.cpp
  ${CMAKE_CURRENT_LIST_DIR}/mla_attention.cpp
  ${CMAKE_CURRENT_LIST_DIR}/rope.cpp
  ${CMAKE_CURRENT_LIST_DIR}/tensor_io.cpp
)
target_sources(mlaforge_torch PRIVATE ${CMAKE_CURRENT_LIST_DIR}/generate.cpp)
target_sources(mlaforge_torch PRIVATE
  ${CMAKE_CURRENT_LIST_DIR}/import_common.cpp
  ${CMAKE_CURRENT_LIST_DIR}/import_gguf.cpp
  ${CMAKE_CURRENT_LIST_DIR}/import_llama2c.cpp
)
target_sources(mlaforge_torch PRIVATE ${CMAKE_CURRENT_LIST_DIR}/weight_reader.cpp)
target_sources(mlaforge_torch PRIVATE ${CMAKE_CURRENT_LIST_DIR}/chat_session.cpp)

target_sources(mlaforge_core PRIVATE
  ${CMAKE_CURRENT_LIST_DIR}/tokenizer_bpe.cpp
  ${CMAKE_CURRENT_LIST_DIR}/tokenizer_components.cpp
  ${CMAKE_CURRENT_LIST_DIR}/tokenizer_export.cpp
  ${CMAKE_CURRENT_LIST_DIR}/tokenizer_json.cpp
  ${CMAKE_CURRENT_LIST_DIR}/tokenizer_pipeline.cpp
  ${CMAKE_CURRENT_LIST_DIR}/tokenizer_sentencepiece.cpp
  ${CMAKE_CURRENT_LIST_DIR}/tokenizer_util.cpp
)
target_sources(mlaforge_core PRIVATE ${CMAKE_CURRENT_LIST_DIR}/text.cpp)

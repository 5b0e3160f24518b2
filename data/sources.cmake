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
target_sources(mlaforge_core PRIVATE ${CMAKE_CURRENT_LIST_DIR}/dataset.cpp ${CMAKE_CURRENT_LIST_DIR}/dataset_rows.cpp
  ${CMAKE_CURRENT_LIST_DIR}/dataset_schema.cpp ${CMAKE_CURRENT_LIST_DIR}/dataset_sources.cpp
  ${CMAKE_CURRENT_LIST_DIR}/parquet_reader.cpp)
target_sources(mlaforge_core PRIVATE ${CMAKE_CURRENT_LIST_DIR}/chat_template.cpp ${CMAKE_CURRENT_LIST_DIR}/sft_sample.cpp ${CMAKE_CURRENT_LIST_DIR}/packing.cpp)
target_sources(mlaforge_core PRIVATE ${CMAKE_CURRENT_LIST_DIR}/token_cache.cpp ${CMAKE_CURRENT_LIST_DIR}/data_loader.cpp)

target_sources(mlaforge_torch PRIVATE
  ${CMAKE_CURRENT_LIST_DIR}/common.cpp
  ${CMAKE_CURRENT_LIST_DIR}/cmd_eval.cpp
  ${CMAKE_CURRENT_LIST_DIR}/cmd_generate.cpp
  ${CMAKE_CURRENT_LIST_DIR}/cmd_inspect.cpp
)
target_sources(mlaforge_torch PRIVATE ${CMAKE_CURRENT_LIST_DIR}/cmd_validate.cpp ${CMAKE_CURRENT_LIST_DIR}/cmd_train.cpp)
target_sources(mlaforge_torch PRIVATE ${CMAKE_CURRENT_LIST_DIR}/inspect_checkpoint.cpp)
target_sources(mlaforge_torch PRIVATE ${CMAKE_CURRENT_LIST_DIR}/cmd_export.cpp)
target_sources(mlaforge_torch PRIVATE ${CMAKE_CURRENT_LIST_DIR}/cmd_chat.cpp ${CMAKE_CURRENT_LIST_DIR}/chat_support.cpp)

target_sources(mlaforge_torch PRIVATE ${CMAKE_CURRENT_LIST_DIR}/evaluate.cpp)
target_sources(mlaforge_torch PRIVATE ${CMAKE_CURRENT_LIST_DIR}/trainable.cpp ${CMAKE_CURRENT_LIST_DIR}/optimizer.cpp ${CMAKE_CURRENT_LIST_DIR}/lr_schedule.cpp ${CMAKE_CURRENT_LIST_DIR}/losses.cpp ${CMAKE_CURRENT_LIST_DIR}/activation_checkpoint.cpp
  ${CMAKE_CURRENT_LIST_DIR}/train_data.cpp ${CMAKE_CURRENT_LIST_DIR}/train.cpp)
target_sources(mlaforge_torch PRIVATE ${CMAKE_CURRENT_LIST_DIR}/checkpoint_store.cpp)
target_sources(mlaforge_torch PRIVATE ${CMAKE_CURRENT_LIST_DIR}/train_checkpoint.cpp)
target_sources(mlaforge_torch PRIVATE ${CMAKE_CURRENT_LIST_DIR}/checkpoint_export.cpp)
target_sources(mlaforge_torch PRIVATE ${CMAKE_CURRENT_LIST_DIR}/train_stages.cpp)

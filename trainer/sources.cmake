target_sources(mlaforge_torch PRIVATE ${CMAKE_CURRENT_LIST_DIR}/evaluate.cpp)

target_sources(mlaforge_core PRIVATE ${CMAKE_CURRENT_LIST_DIR}/config.cpp)

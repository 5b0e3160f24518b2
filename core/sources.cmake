target_sources(mlaforge_core PRIVATE
  ${CMAKE_CURRENT_LIST_DIR}/dtype.cpp
  ${CMAKE_CURRENT_LIST_DIR}/mmap_file.cpp
  ${CMAKE_CURRENT_LIST_DIR}/progress.cpp
  ${CMAKE_CURRENT_LIST_DIR}/threads.cpp
)
target_sources(mlaforge_core PRIVATE ${CMAKE_CURRENT_LIST_DIR}/../trainer/metrics_log.cpp ${CMAKE_CURRENT_LIST_DIR}/../trainer/metrics_jsonl.cpp ${CMAKE_CURRENT_LIST_DIR}/../trainer/metrics_tfevents.cpp ${CMAKE_CURRENT_LIST_DIR}/../trainer/metrics_progress.cpp ${CMAKE_CURRENT_LIST_DIR}/../trainer/metrics_png.cpp ${CMAKE_CURRENT_LIST_DIR}/../trainer/metrics_raster.cpp ${CMAKE_CURRENT_LIST_DIR}/../trainer/metrics_plot.cpp)

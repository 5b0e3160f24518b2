# launch/: mlarun, the torchrun-like launcher over mpirun / srun. Torch-free: the command building
# (launch_plan.cpp) and the failure-report parsing (failure_report.cpp) live in mlaforge_core so that
# core_tests cover them (tests/core/launch_plan_test.cpp); the executable adds only process handling.
# Included from the top CMakeLists.txt after mlaforge_core exists (outside the LibTorch block).
target_sources(mlaforge_core PRIVATE ${CMAKE_CURRENT_LIST_DIR}/launch_plan.cpp ${CMAKE_CURRENT_LIST_DIR}/failure_report.cpp)

add_executable(mlarun ${CMAKE_CURRENT_LIST_DIR}/mlarun.cpp)
target_link_libraries(mlarun PRIVATE mlaforge_core)
if(TARGET CLI11::CLI11)
  target_link_libraries(mlarun PRIVATE CLI11::CLI11)
endif()
target_compile_options(mlarun PRIVATE -Wall -Wextra -Wno-unused-parameter)
# Next to mlaforge (build/bin), where mlarun also looks for the program it is asked to run.
set_target_properties(mlarun PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/bin)

# parallel/: the communication layer (single, MPI and NCCL communicators, launcher environment).
# Included from the top CMakeLists.txt inside the LibTorch block, after mlaforge_torch exists.
#
# Both real backends are optional and compiled in when found; without them the factory functions throw a
# clear mlaforge::Error. Their include directories and macros are set on their own source file only, so
# the other mlaforge_torch translation units (and their precompiled header and ccache entries) do not
# change when MPI or NCCL appear or disappear.
#   MLAFORGE_HAVE_MPI   mpi_communicator.cpp, when find_package(MPI COMPONENTS C) succeeds (Debian:
#                       libopenmpi-dev, which scripts/setup.sh installs)
#   MLAFORGE_HAVE_NCCL  nccl_communicator.cpp, when nccl.h and libnccl, the CUDA runtime headers and
#                       library, and LibTorch's c10_cuda are all found. NCCL is looked up first in the
#                       torch wheel's own nvidia-nccl package (the very libnccl.so.2 that libtorch_cuda
#                       loads through its RPATH, so one process never holds two NCCLs), then in the CUDA
#                       toolkit; the CUDA runtime (library and headers) likewise in the wheel's
#                       nvidia/cu*/ first, then the toolkit. MLAFORGE_NCCL=OFF skips it, =ON makes it required.
target_sources(mlaforge_torch PRIVATE ${CMAKE_CURRENT_LIST_DIR}/process_env.cpp ${CMAKE_CURRENT_LIST_DIR}/communicator.cpp
  ${CMAKE_CURRENT_LIST_DIR}/mpi_communicator.cpp ${CMAKE_CURRENT_LIST_DIR}/nccl_communicator.cpp)

# --- MPI ---------------------------------------------------------------------------------------------
set(MLAFORGE_HAVE_MPI OFF)
find_package(MPI COMPONENTS C)
if(MPI_C_FOUND)
  set(MLAFORGE_HAVE_MPI ON)
  set_source_files_properties(${CMAKE_CURRENT_LIST_DIR}/mpi_communicator.cpp PROPERTIES
    # The C API only: mpi.h would otherwise pull in the deprecated C++ bindings (libmpi_cxx) in a C++ TU.
    COMPILE_DEFINITIONS "MLAFORGE_HAVE_MPI;OMPI_SKIP_MPICXX=1;MPICH_SKIP_MPICXX=1;${MPI_C_COMPILE_DEFINITIONS}"
    INCLUDE_DIRECTORIES "${MPI_C_INCLUDE_DIRS}"
    COMPILE_OPTIONS "${MPI_C_COMPILE_OPTIONS}")
  target_link_libraries(mlaforge_torch PRIVATE $<LINK_ONLY:MPI::MPI_C>)
  message(STATUS "MPI backend: ${MPI_C_LIBRARIES} (MPI ${MPI_C_VERSION})")
else()
  message(STATUS "MPI backend: disabled, find_package(MPI COMPONENTS C) found no MPI (install libopenmpi-dev)")
endif()

# --- NCCL --------------------------------------------------------------------------------------------
set(MLAFORGE_NCCL "AUTO" CACHE STRING "NCCL backend: AUTO, ON (required) or OFF")
set_property(CACHE MLAFORGE_NCCL PROPERTY STRINGS AUTO ON OFF)
set(MLAFORGE_HAVE_NCCL OFF)
if(NOT MLAFORGE_NCCL STREQUAL "OFF")
  # Torch_DIR is <site-packages>/torch/share/cmake/Torch for the wheel.
  get_filename_component(_mla_site "${Torch_DIR}/../../../.." ABSOLUTE)
  file(GLOB _mla_wheel_cuda_includes "${_mla_site}/nvidia/cu*/include" "${_mla_site}/nvidia/cuda_runtime/include")
  file(GLOB _mla_wheel_cuda_libs "${_mla_site}/nvidia/cu*/lib" "${_mla_site}/nvidia/cuda_runtime/lib")
  find_path(MLAFORGE_NCCL_INCLUDE_DIR nccl.h
            HINTS "${_mla_site}/nvidia/nccl/include" ${CUDAToolkit_INCLUDE_DIRS} /usr/local/cuda/include)
  find_library(MLAFORGE_NCCL_LIBRARY NAMES nccl libnccl.so.2 NAMES_PER_DIR
               HINTS "${_mla_site}/nvidia/nccl/lib" ${CUDAToolkit_LIBRARY_DIR} /usr/local/cuda/lib64)
  # The CUDA runtime that libtorch_cuda itself loads (the wheel's) first: linking another copy of
  # libcudart.so.N would make the loader pick that one for torch too.
  find_path(MLAFORGE_CUDART_INCLUDE_DIR cuda_runtime_api.h
            HINTS ${_mla_wheel_cuda_includes} ${CUDAToolkit_INCLUDE_DIRS} /usr/local/cuda/include)
  find_library(MLAFORGE_CUDART_LIBRARY NAMES libcudart.so.13 libcudart.so.12 cudart NAMES_PER_DIR
               HINTS ${_mla_wheel_cuda_libs} ${CUDAToolkit_LIBRARY_DIR} /usr/local/cuda/lib64)
  if(NOT C10_CUDA_LIBRARY)
    find_library(C10_CUDA_LIBRARY c10_cuda PATHS "${TORCH_INSTALL_PREFIX}/lib" NO_DEFAULT_PATH)
  endif()
  set(_mla_why "")
  foreach(_mla_need MLAFORGE_NCCL_INCLUDE_DIR MLAFORGE_NCCL_LIBRARY MLAFORGE_CUDART_INCLUDE_DIR MLAFORGE_CUDART_LIBRARY
                   C10_CUDA_LIBRARY)
    if(NOT ${_mla_need})
      string(APPEND _mla_why " ${_mla_need}")
    endif()
  endforeach()
  if(_mla_why STREQUAL "")
    set(MLAFORGE_HAVE_NCCL ON)
    add_library(mlaforge_nccl SHARED IMPORTED)
    set_target_properties(mlaforge_nccl PROPERTIES IMPORTED_LOCATION "${MLAFORGE_NCCL_LIBRARY}")
    set_source_files_properties(${CMAKE_CURRENT_LIST_DIR}/nccl_communicator.cpp PROPERTIES
      COMPILE_DEFINITIONS MLAFORGE_HAVE_NCCL
      INCLUDE_DIRECTORIES "${MLAFORGE_NCCL_INCLUDE_DIR};${MLAFORGE_CUDART_INCLUDE_DIR}")
    target_link_libraries(mlaforge_torch PRIVATE $<LINK_ONLY:mlaforge_nccl> $<LINK_ONLY:${MLAFORGE_CUDART_LIBRARY}>
                          $<LINK_ONLY:${C10_CUDA_LIBRARY}>)
    message(STATUS "NCCL backend: ${MLAFORGE_NCCL_LIBRARY} (headers ${MLAFORGE_NCCL_INCLUDE_DIR}; CUDA runtime "
                   "${MLAFORGE_CUDART_LIBRARY}, headers ${MLAFORGE_CUDART_INCLUDE_DIR})")
  elseif(MLAFORGE_NCCL STREQUAL "ON")
    message(FATAL_ERROR "MLAFORGE_NCCL=ON but not found:${_mla_why}")
  else()
    message(STATUS "NCCL backend: disabled, not found:${_mla_why}")
  endif()
endif()

# Data-parallel helpers (gradient buckets, scalar sums, replica check), used by trainer/train.cpp.
target_sources(mlaforge_torch PRIVATE ${CMAKE_CURRENT_LIST_DIR}/data_parallel.cpp)
target_sources(mlaforge_torch PRIVATE ${CMAKE_CURRENT_LIST_DIR}/tensor_parallel.cpp)
target_sources(mlaforge_torch PRIVATE ${CMAKE_CURRENT_LIST_DIR}/zero.cpp)
target_sources(mlaforge_torch PRIVATE ${CMAKE_CURRENT_LIST_DIR}/grad_sync.cpp)

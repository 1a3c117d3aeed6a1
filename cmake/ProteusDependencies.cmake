# The one place that knows how each dependency is installed (Debian's Trilinos Kokkos 3.4,
# a Kokkos 4.x install given by Kokkos_ROOT, Catch2 v2 or v3, parallel or serial HDF5).
# Every other file uses only the targets defined here:
#   proteus_deps_kokkos   Kokkos core + Kokkos Kernels
#   proteus_deps_hdf5     HDF5 C library (PROTEUS_HDF5_PARALLEL=0/1)
#   proteus_deps_cli11    CLI11 headers
#   proteus_deps_json     nlohmann/json headers
#   proteus_deps_catch2   Catch2 with a main (PROTEUS_CATCH2_V3=0/1)
# and MPI::MPI_CXX. It is also installed with the package config, so that consumers get the
# same fixes: there PROTEUS_CONSUMER is set and only Kokkos and MPI are looked up (the exported
# targets carry the resolved HDF5 and CLI11 paths). Included twice is harmless.
include_guard(GLOBAL)

# ---- Kokkos --------------------------------------------------------------------------------
find_package(Kokkos REQUIRED)
if(NOT DEFINED Kokkos_VERSION OR Kokkos_VERSION STREQUAL "")
  set(Kokkos_VERSION "3.4")
endif()
if(TARGET Kokkos::kokkos)
  # Trilinos' export lists ${prefix}/lib/include, which does not exist; CMake then refuses to
  # generate. Keep only existing directories and add the real header directory.
  get_target_property(_pk_incs Kokkos::kokkos INTERFACE_INCLUDE_DIRECTORIES)
  set(_pk_keep "")
  foreach(_d IN LISTS _pk_incs Kokkos_INCLUDE_DIRS)
    if(_d AND EXISTS "${_d}")
      list(APPEND _pk_keep "${_d}")
    endif()
  endforeach()
  list(REMOVE_DUPLICATES _pk_keep)
  set_target_properties(Kokkos::kokkos PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "${_pk_keep}")
endif()

find_package(KokkosKernels REQUIRED)
if(NOT TARGET proteus_deps_kokkos AND NOT PROTEUS_CONSUMER)
  add_library(proteus_deps_kokkos INTERFACE)
  if(TARGET Kokkos::kokkoskernels)
    target_link_libraries(proteus_deps_kokkos INTERFACE Kokkos::kokkoskernels Kokkos::kokkos)
  else()
    # Trilinos' KokkosKernels package defines no Kokkos::kokkoskernels target.
    find_library(PROTEUS_KOKKOSKERNELS_LIB NAMES trilinos_kokkoskernels kokkoskernels
                 HINTS ${KokkosKernels_LIBRARY_DIRS} REQUIRED)
    target_link_libraries(proteus_deps_kokkos INTERFACE ${PROTEUS_KOKKOSKERNELS_LIB} Kokkos::kokkos)
    target_include_directories(proteus_deps_kokkos INTERFACE ${KokkosKernels_INCLUDE_DIRS})
  endif()
endif()
message(STATUS "proteus: Kokkos ${Kokkos_VERSION}, devices: ${Kokkos_DEVICES}")

# ---- MPI -----------------------------------------------------------------------------------
find_package(MPI REQUIRED COMPONENTS C CXX)

if(PROTEUS_CONSUMER)
  return()
endif()

# ---- HDF5: parallel when the install has it, serial otherwise --------------------------------
if(NOT TARGET proteus_deps_hdf5)
  find_package(HDF5 REQUIRED COMPONENTS C)
  add_library(proteus_deps_hdf5 INTERFACE)
  target_include_directories(proteus_deps_hdf5 INTERFACE ${HDF5_C_INCLUDE_DIRS} ${HDF5_INCLUDE_DIRS})
  target_link_libraries(proteus_deps_hdf5 INTERFACE ${HDF5_C_LIBRARIES} ${HDF5_LIBRARIES})
  if(HDF5_C_DEFINITIONS OR HDF5_DEFINITIONS)
    target_compile_definitions(proteus_deps_hdf5 INTERFACE ${HDF5_C_DEFINITIONS} ${HDF5_DEFINITIONS})
  endif()
  if(HDF5_IS_PARALLEL)
    set(PROTEUS_HDF5_PARALLEL 1)
    target_link_libraries(proteus_deps_hdf5 INTERFACE MPI::MPI_C)
  else()
    set(PROTEUS_HDF5_PARALLEL 0)
  endif()
  target_compile_definitions(proteus_deps_hdf5 INTERFACE PROTEUS_HDF5_PARALLEL=${PROTEUS_HDF5_PARALLEL})
  message(STATUS "proteus: HDF5 ${HDF5_VERSION}, parallel=${PROTEUS_HDF5_PARALLEL}")
endif()

# ---- CLI11 (header only) ---------------------------------------------------------------------
if(NOT TARGET proteus_deps_cli11)
  add_library(proteus_deps_cli11 INTERFACE)
  # Header only: resolved to a directory, so that the exported targets need no CLI11 package.
  find_package(CLI11 CONFIG QUIET)
  if(TARGET CLI11::CLI11)
    get_target_property(_pc_inc CLI11::CLI11 INTERFACE_INCLUDE_DIRECTORIES)
  endif()
  find_path(PROTEUS_CLI11_INCLUDE CLI/CLI.hpp HINTS ${_pc_inc} ${CLI11_ROOT}/include REQUIRED)
  target_include_directories(proteus_deps_cli11 INTERFACE ${PROTEUS_CLI11_INCLUDE})
endif()

# ---- nlohmann/json (header only), for every JSON file and report -----------------------------
if(NOT TARGET proteus_deps_json)
  add_library(proteus_deps_json INTERFACE)
  find_package(nlohmann_json 3 CONFIG QUIET)
  if(TARGET nlohmann_json::nlohmann_json)
    get_target_property(_pj_inc nlohmann_json::nlohmann_json INTERFACE_INCLUDE_DIRECTORIES)
  endif()
  find_path(PROTEUS_JSON_INCLUDE nlohmann/json.hpp HINTS ${_pj_inc} ${nlohmann_json_ROOT}/include REQUIRED)
  target_include_directories(proteus_deps_json INTERFACE ${PROTEUS_JSON_INCLUDE})
endif()

# ---- Catch2 v2 (Debian) or v3: our own main (it initialises MPI and Kokkos) in both -------
if(PROTEUS_ENABLE_TESTS AND NOT TARGET proteus_deps_catch2)
  find_package(Catch2 QUIET CONFIG)
  add_library(proteus_deps_catch2 INTERFACE)
  if(Catch2_VERSION VERSION_GREATER_EQUAL 3)
    target_link_libraries(proteus_deps_catch2 INTERFACE Catch2::Catch2)
    target_compile_definitions(proteus_deps_catch2 INTERFACE PROTEUS_CATCH2_V3=1)
  else()
    if(TARGET Catch2::Catch2)
      target_link_libraries(proteus_deps_catch2 INTERFACE Catch2::Catch2)
    else()
      find_path(PROTEUS_CATCH2_INCLUDE catch2/catch.hpp HINTS ${Catch2_ROOT}/include REQUIRED)
      target_include_directories(proteus_deps_catch2 INTERFACE ${PROTEUS_CATCH2_INCLUDE})
    endif()
    target_compile_definitions(proteus_deps_catch2 INTERFACE PROTEUS_CATCH2_V3=0)
  endif()
endif()

# ---- A Python with h5py and matplotlib, for tools/ and their tests ----------------------------
if(NOT DEFINED PROTEUS_PYTHON)
  set(PROTEUS_PYTHON "")
  find_program(_pp_path_python NAMES python3)
  foreach(_py IN ITEMS ${_pp_path_python} /usr/bin/python3)
    if(_py AND NOT PROTEUS_PYTHON)
      execute_process(COMMAND ${_py} -c "import h5py, matplotlib"
                      RESULT_VARIABLE _pp_rc OUTPUT_QUIET ERROR_QUIET)
      if(_pp_rc EQUAL 0)
        set(PROTEUS_PYTHON ${_py})
      endif()
    endif()
  endforeach()
  set(PROTEUS_PYTHON "${PROTEUS_PYTHON}" CACHE FILEPATH "Python with h5py and matplotlib")
endif()

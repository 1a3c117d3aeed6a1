# Writes include/proteus/version.hpp into the build tree at build time (cmake -P), so that the
# commit id that drivers and benchmarks report is the one built, not the one configured.
# configure_file leaves the file untouched when nothing changed, so nothing is rebuilt then.
# PROTEUS_GIT_COMMIT in the environment names the commit of a copy whose .git is missing or stale
# (a source tarball, a tree copied to another machine).
set(PROTEUS_GIT_COMMIT "unknown")
find_package(Git QUIET)
if(DEFINED ENV{PROTEUS_GIT_COMMIT} AND NOT "$ENV{PROTEUS_GIT_COMMIT}" STREQUAL "")
  set(PROTEUS_GIT_COMMIT "$ENV{PROTEUS_GIT_COMMIT}")
elseif(GIT_FOUND AND EXISTS "${SOURCE_DIR}/.git")
  execute_process(COMMAND ${GIT_EXECUTABLE} rev-parse --short HEAD WORKING_DIRECTORY ${SOURCE_DIR}
                  OUTPUT_VARIABLE _commit OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET RESULT_VARIABLE _rc)
  execute_process(COMMAND ${GIT_EXECUTABLE} diff --quiet HEAD -- WORKING_DIRECTORY ${SOURCE_DIR}
                  RESULT_VARIABLE _dirty ERROR_QUIET)
  if(_rc EQUAL 0)
    set(PROTEUS_GIT_COMMIT ${_commit})
    if(NOT _dirty EQUAL 0)
      string(APPEND PROTEUS_GIT_COMMIT "+changes")
    endif()
  endif()
endif()
configure_file(${SOURCE_DIR}/include/proteus/version.hpp.in ${BINARY_DIR}/include/proteus/version.hpp @ONLY)

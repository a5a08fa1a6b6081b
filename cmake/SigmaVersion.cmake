# sigma::version: the header sigma/version.h with the project version and the
# git revision (sigmad --version, sigmactl --version, sigma_build_info).
# Re-configures when HEAD moves, so the revision does not go stale.
find_package(Git QUIET)
set(SIGMA_REVISION "unknown")
if(GIT_FOUND)
  execute_process(COMMAND ${GIT_EXECUTABLE} rev-parse --short=12 HEAD
                  WORKING_DIRECTORY ${CMAKE_SOURCE_DIR} OUTPUT_VARIABLE _rev
                  OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET RESULT_VARIABLE _rc)
  if(_rc EQUAL 0 AND _rev)
    set(SIGMA_REVISION "${_rev}")
    execute_process(COMMAND ${GIT_EXECUTABLE} status --porcelain --untracked-files=no
                    WORKING_DIRECTORY ${CMAKE_SOURCE_DIR} OUTPUT_VARIABLE _dirty ERROR_QUIET)
    if(_dirty)
      set(SIGMA_REVISION "${SIGMA_REVISION}-dirty")
    endif()
    foreach(_what HEAD index)
      execute_process(COMMAND ${GIT_EXECUTABLE} rev-parse --path-format=absolute --git-path ${_what}
                      WORKING_DIRECTORY ${CMAKE_SOURCE_DIR} OUTPUT_VARIABLE _path
                      OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
      if(_path AND EXISTS "${_path}")
        set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS "${_path}")
      endif()
    endforeach()
  endif()
endif()
configure_file(${CMAKE_CURRENT_LIST_DIR}/version.h.in ${CMAKE_BINARY_DIR}/generated/sigma/version.h @ONLY)
add_library(sigma_version INTERFACE)
add_library(sigma::version ALIAS sigma_version)
target_include_directories(sigma_version INTERFACE $<BUILD_INTERFACE:${CMAKE_BINARY_DIR}/generated>)

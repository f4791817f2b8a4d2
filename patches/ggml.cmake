# Applies Spindle's llama.cpp patches at configure time, without touching the
# sources in cargo's registry.
#
# .cargo/config.toml points CMAKE_PROJECT_ggml_INCLUDE here; llama-cpp-sys-2's
# build script passes CMAKE_* and GGML_* variables on to CMake, which includes
# this file right after ggml's project(). It copies the files the patches
# touch into the build tree, applies the patches there in order, and at the
# end of ggml's directory swaps the copies into the ggml-cpu target's
# sources. Quoted includes resolve next to the including file first, so the
# patched sources see each other; everything else comes from the original tree.
#
# GGML_SPINDLE_PATCHES must be the first 12 hex digits of the sha256 of the
# patches concatenated in this order (`cat` them into `sha256sum`): cargo
# reruns llama-cpp-sys-2's build script when a GGML_* variable changes, and
# configuring fails when a patch changed without it.

set(SPINDLE_PATCHES
    "${CMAKE_CURRENT_LIST_DIR}/ggml-q4_1-repack.patch"
    "${CMAKE_CURRENT_LIST_DIR}/ggml-q8_0-q5_0-repack.patch")
set(SPINDLE_PATCHED_FILES
    src/ggml-cpu/repack.cpp
    src/ggml-cpu/repack.h
    src/ggml-cpu/arch-fallback.h
    src/ggml-cpu/arch/x86/repack.cpp)

# A changed patch makes the build reconfigure (cargo's build script skips
# configuring a configured tree); cargo itself reruns that script only when
# GGML_SPINDLE_PATCHES changes, so the two must move together. The build
# script's environment carries it on a reconfigure, the cache on the first.
set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS ${SPINDLE_PATCHES})
set(spindle_id "$ENV{GGML_SPINDLE_PATCHES}")
if (spindle_id STREQUAL "")
    set(spindle_id "${GGML_SPINDLE_PATCHES}")
endif()
# GGML_SPINDLE_PATCHES=off in the environment builds stock ggml (the check
# that the build works without the patches). Only a fresh configure sees it:
# a new CARGO_TARGET_DIR or `cargo clean --release -p llama-cpp-sys-2`.
if (spindle_id STREQUAL "off")
    message(STATUS "spindle: GGML_SPINDLE_PATCHES=off, building stock ggml")
    return()
endif()
set(spindle_all "")
foreach(p IN LISTS SPINDLE_PATCHES)
    file(READ "${p}" text)
    string(APPEND spindle_all "${text}")
endforeach()
string(SHA256 spindle_sha "${spindle_all}")
string(SUBSTRING "${spindle_sha}" 0 12 spindle_sha)
if (NOT spindle_id STREQUAL spindle_sha)
    message(FATAL_ERROR "spindle: the patches changed; set GGML_SPINDLE_PATCHES = \"${spindle_sha}\" in .cargo/config.toml so cargo rebuilds llama.cpp")
endif()
if (GGML_BACKEND_DL OR GGML_CPU_ALL_VARIANTS)
    message(FATAL_ERROR "spindle: the ggml patches expect one static ggml-cpu target (no GGML_BACKEND_DL / GGML_CPU_ALL_VARIANTS)")
endif()

find_program(SPINDLE_PATCH_TOOL patch REQUIRED)
set(SPINDLE_PATCHED_DIR "${CMAKE_CURRENT_BINARY_DIR}/spindle-patched")
file(REMOVE_RECURSE "${SPINDLE_PATCHED_DIR}")
foreach(f IN LISTS SPINDLE_PATCHED_FILES)
    configure_file("${CMAKE_CURRENT_SOURCE_DIR}/${f}" "${SPINDLE_PATCHED_DIR}/ggml/${f}" COPYONLY)
endforeach()
foreach(p IN LISTS SPINDLE_PATCHES)
    execute_process(
        COMMAND "${SPINDLE_PATCH_TOOL}" -p1 --forward --batch -i "${p}"
        WORKING_DIRECTORY "${SPINDLE_PATCHED_DIR}"
        RESULT_VARIABLE spindle_rc
        OUTPUT_VARIABLE spindle_out
        ERROR_VARIABLE spindle_out)
    if (NOT spindle_rc EQUAL 0)
        message(FATAL_ERROR "spindle: ${p} does not apply to this llama.cpp:\n${spindle_out}")
    endif()
    message(STATUS "spindle: applied ${p}")
endforeach()

function(spindle_swap_patched_sources)
    if (NOT TARGET ggml-cpu)
        message(FATAL_ERROR "spindle: no ggml-cpu target to patch")
    endif()
    get_target_property(sources ggml-cpu SOURCES)
    get_target_property(target_dir ggml-cpu SOURCE_DIR)
    set(swapped 0)
    set(result "")
    foreach(s IN LISTS sources)
        get_filename_component(abs "${s}" ABSOLUTE BASE_DIR "${target_dir}")
        foreach(f IN LISTS SPINDLE_PATCHED_FILES)
            if (abs STREQUAL "${CMAKE_CURRENT_SOURCE_DIR}/${f}")
                set(s "${SPINDLE_PATCHED_DIR}/ggml/${f}")
                math(EXPR swapped "${swapped} + 1")
            endif()
        endforeach()
        list(APPEND result "${s}")
    endforeach()
    # arch/x86/repack.cpp is only a source on x86; the generic pair always is.
    if (swapped LESS 2)
        message(FATAL_ERROR "spindle: the patched files are not among ggml-cpu's sources (${swapped} found)")
    endif()
    set_property(TARGET ggml-cpu PROPERTY SOURCES "${result}")
endfunction()
cmake_language(DEFER DIRECTORY "${CMAKE_CURRENT_SOURCE_DIR}" CALL spindle_swap_patched_sources)

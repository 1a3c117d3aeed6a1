// Tests written once against TEST_EXECSPACE and instantiated for every execution space the
// library is built for (Cabana's and ArborX's pattern): PROTEUS_TEST_CASE is a Catch2 template
// test case over proteus::test::ExecutionSpaces. The library is compiled for one space
// (proteus::ExecSpace: Serial, OpenMP, CUDA or HIP), so the list holds that one; a build that
// compiled the stages for more spaces would list them here and nowhere else.
#pragma once

#include <tuple>

#include "proteus/types.hpp"
#include "proteus_catch.hpp"

#if PROTEUS_CATCH2_V3
#include <catch2/catch_template_test_macros.hpp>
#endif

namespace proteus::test {
using ExecutionSpaces = std::tuple<proteus::ExecSpace>;
}

#define PROTEUS_TEST_CASE(name, tags) TEMPLATE_LIST_TEST_CASE(name, tags, proteus::test::ExecutionSpaces)
// Inside a PROTEUS_TEST_CASE: the execution space of this instantiation.
#define TEST_EXECSPACE TestType

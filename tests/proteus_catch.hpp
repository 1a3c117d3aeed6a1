// Catch2 v2 (Debian) and v3 differ only in the header; the build says which one it found.
#pragma once
#if PROTEUS_CATCH2_V3
#include <catch2/catch_approx.hpp>
#include <catch2/catch_test_macros.hpp>
#include <catch2/generators/catch_generators.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>
using Catch::Approx;
#define PROTEUS_CONTAINS(text) Catch::Matchers::ContainsSubstring(text)
#else
#include <catch2/catch.hpp>
#define PROTEUS_CONTAINS(text) Catch::Contains(text)
#endif

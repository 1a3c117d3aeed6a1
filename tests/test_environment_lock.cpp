// The environment behind one lock (drivers/environment_lock.cpp): what the libraries of this
// executable find, the C library's meaning of each call, and readers on other threads while the
// environment grows (without the lock, glibc may free the array a reader walks).
#include <dlfcn.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "proteus_catch.hpp"

#if defined(__GLIBC__)

TEST_CASE("every library of the process finds the locked getenv and setenv", "[environment]") {
  void* const libc = dlopen("libc.so.6", RTLD_LAZY | RTLD_NOLOAD);
  REQUIRE(libc != nullptr);
  for (char const* name : {"getenv", "secure_getenv", "setenv", "unsetenv", "putenv", "clearenv"}) {
    INFO(name);
    void* const own = dlsym(RTLD_DEFAULT, name);  // the global lookup: what libcuda or libmpi get
    CHECK(own != nullptr);
    CHECK(own != dlsym(libc, name));  // this executable's definition, not the C library's
  }
  CHECK(dlsym(RTLD_DEFAULT, "getenv") == reinterpret_cast<void*>(&getenv));
  dlclose(libc);
}

TEST_CASE("getenv, setenv, unsetenv and putenv keep their meaning", "[environment]") {
  REQUIRE(setenv("PROTEUS_TEST_ENV", "one", 1) == 0);
  CHECK(std::string(getenv("PROTEUS_TEST_ENV")) == "one");
  CHECK(getenv("PROTEUS_TEST_EN") == nullptr);   // a prefix of a name is not the name
  CHECK(getenv("PROTEUS_TEST_ENVX") == nullptr);
  CHECK(std::string(secure_getenv("PROTEUS_TEST_ENV")) == "one");  // this test runs without setuid
  REQUIRE(setenv("PROTEUS_TEST_ENV", "two", 0) == 0);  // no overwrite
  CHECK(std::string(getenv("PROTEUS_TEST_ENV")) == "one");
  REQUIRE(setenv("PROTEUS_TEST_ENV", "", 1) == 0);
  CHECK(std::string(getenv("PROTEUS_TEST_ENV")).empty());
  REQUIRE(unsetenv("PROTEUS_TEST_ENV") == 0);
  CHECK(getenv("PROTEUS_TEST_ENV") == nullptr);
  static char assignment[] = "PROTEUS_TEST_PUT=three";
  REQUIRE(putenv(assignment) == 0);
  CHECK(std::string(getenv("PROTEUS_TEST_PUT")) == "three");
  CHECK(setenv("BAD=NAME", "x", 1) == -1);  // the C library's own checks still apply
  CHECK(getenv("") == nullptr);
}

TEST_CASE("readers on other threads while the environment grows", "[environment]") {
  REQUIRE(setenv("PROTEUS_TEST_STEADY", "steady", 1) == 0);
  int const added = 4000;
  std::atomic<bool> done{false};
  std::atomic<long> reads{0}, wrong{0};
  std::vector<std::thread> readers;
  for (int r = 0; r < 3; ++r)
    readers.emplace_back([&, r] {
      while (!done.load()) {
        char const* steady = getenv("PROTEUS_TEST_STEADY");
        if (steady == nullptr || std::strcmp(steady, "steady") != 0) ++wrong;
        (void)getenv(r == 0 ? "PATH" : "PROTEUS_TEST_GROW_0");
        ++reads;
      }
    });
  for (int i = 0; i < added; ++i) {
    std::string const name = "PROTEUS_TEST_GROW_" + std::to_string(i);
    REQUIRE(setenv(name.c_str(), std::to_string(i).c_str(), 1) == 0);
  }
  done = true;
  for (auto& t : readers) t.join();
  CHECK(wrong.load() == 0);
  CHECK(reads.load() > 0);
  for (int i = 0; i < added; ++i) {
    std::string const name = "PROTEUS_TEST_GROW_" + std::to_string(i);
    char const* value = getenv(name.c_str());
    REQUIRE(value != nullptr);
    CHECK(std::string(value) == std::to_string(i));
    unsetenv(name.c_str());
  }
}

#endif  // __GLIBC__

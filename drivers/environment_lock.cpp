// The process environment behind one lock: getenv, secure_getenv, setenv, unsetenv, putenv and
// clearenv, linked into an executable, take the place of the C library's for every library the
// process loads.
//
// Why: proteus_driver starts Kokkos and the GPU on one thread while MPI_Init runs on another.
// MPI_Init adds variables (setenv), and glibc (before 2.40) may move the environment's array to a
// new allocation and free the old one while getenv on another thread walks it: on an H200 node
// cuInit's getenv crashed in about one start in ten. With this lock, readers and writers take
// turns. Strings that getenv returned stay valid, as the C library never frees them.
#include <cstdlib>  // first: it defines __GLIBC__

#if defined(__GLIBC__)

#include <dlfcn.h>
#include <sys/auxv.h>

#include <cstring>
#include <mutex>

extern char** environ;

namespace {

std::mutex environment_mutex;  // constant-initialised: usable before any constructor runs

// The C library's own function `name` (the next definition after this executable's).
template <class Function>
Function next_definition(char const* name) {
  return reinterpret_cast<Function>(dlsym(RTLD_NEXT, name));
}

}  // namespace

extern "C" {

char* getenv(char const* name) noexcept {
  std::size_t const length = std::strlen(name);
  std::lock_guard<std::mutex> const guard(environment_mutex);
  if (environ == nullptr) return nullptr;
  for (char** entry = environ; *entry != nullptr; ++entry)
    if (std::strncmp(*entry, name, length) == 0 && (*entry)[length] == '=') return *entry + length + 1;
  return nullptr;
}

// As getenv, and none for a process that runs with privileges it was not started with (setuid).
char* secure_getenv(char const* name) noexcept {
  return getauxval(AT_SECURE) != 0 ? nullptr : getenv(name);
}

int setenv(char const* name, char const* value, int overwrite) noexcept {
  static auto const next = next_definition<int (*)(char const*, char const*, int)>("setenv");
  std::lock_guard<std::mutex> const guard(environment_mutex);
  return next(name, value, overwrite);
}

int unsetenv(char const* name) noexcept {
  static auto const next = next_definition<int (*)(char const*)>("unsetenv");
  std::lock_guard<std::mutex> const guard(environment_mutex);
  return next(name);
}

int putenv(char* assignment) noexcept {
  static auto const next = next_definition<int (*)(char*)>("putenv");
  std::lock_guard<std::mutex> const guard(environment_mutex);
  return next(assignment);
}

int clearenv() noexcept {
  static auto const next = next_definition<int (*)()>("clearenv");
  std::lock_guard<std::mutex> const guard(environment_mutex);
  return next();
}

}  // extern "C"

#endif  // __GLIBC__

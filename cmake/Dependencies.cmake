# Every third-party library comes from a Debian 12 package (see ./setup).
# Each is wrapped in a kiln::dep_<name> target, linked PRIVATE by the one
# module that owns it.
find_package(PkgConfig REQUIRED)
find_package(OpenSSL REQUIRED COMPONENTS Crypto)
find_package(SQLite3 REQUIRED)
find_package(nlohmann_json 3.10 REQUIRED)
find_package(CLI11 REQUIRED)
find_package(yaml-cpp REQUIRED)
find_package(Threads REQUIRED)
pkg_check_modules(SODIUM REQUIRED IMPORTED_TARGET libsodium)
pkg_check_modules(LIBARCHIVE REQUIRED IMPORTED_TARGET libarchive)
# zstd, the format caches serve most, is read through libzstd directly: one
# decompression context per thread is reused from NAR to NAR.
pkg_check_modules(ZSTD REQUIRED IMPORTED_TARGET libzstd)
# Debian builds cpp-httplib as a shared library with OpenSSL, zlib and brotli
# support; its pkg-config flags carry the matching CPPHTTPLIB_* defines.
pkg_check_modules(HTTPLIB REQUIRED IMPORTED_TARGET cpp-httplib)
pkg_check_modules(TOMLPP REQUIRED IMPORTED_TARGET tomlplusplus)
if(KILN_BUILD_TESTS)
  find_package(Catch2 2 REQUIRED)
endif()

add_library(kiln::dep_crypto ALIAS OpenSSL::Crypto)
add_library(kiln::dep_sqlite ALIAS SQLite::SQLite3)
add_library(kiln::dep_json ALIAS nlohmann_json::nlohmann_json)
add_library(kiln::dep_cli11 ALIAS CLI11::CLI11)
add_library(kiln::dep_sodium ALIAS PkgConfig::SODIUM)
add_library(kiln::dep_archive ALIAS PkgConfig::LIBARCHIVE)
add_library(kiln::dep_zstd ALIAS PkgConfig::ZSTD)
add_library(kiln::dep_httplib ALIAS PkgConfig::HTTPLIB)
add_library(kiln::dep_toml ALIAS PkgConfig::TOMLPP)
if(TARGET yaml-cpp::yaml-cpp)
  add_library(kiln::dep_yaml ALIAS yaml-cpp::yaml-cpp)
else()
  add_library(kiln_dep_yaml INTERFACE)
  target_link_libraries(kiln_dep_yaml INTERFACE yaml-cpp)
  add_library(kiln::dep_yaml ALIAS kiln_dep_yaml)
endif()

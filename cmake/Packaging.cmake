# `cpack -G DEB` in the build folder makes a Debian package of what
# `cmake --install` installs: kiln, cargo-kiln, the man page and the bash
# completion, under /usr.
set(CPACK_PACKAGE_NAME kiln)
set(CPACK_PACKAGE_VENDOR "kiln")
set(CPACK_PACKAGE_CONTACT "kiln maintainers <kiln@localhost>")
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY "build cache for Rust with Nix-compatible binary caches")
set(CPACK_PACKAGE_DESCRIPTION
  "kiln turns every crate compilation of a Cargo project into a hermetic derivation, \
keeps outputs in a content-addressed store, and moves signed outputs between machines \
through Nix-compatible binary caches, so CI and teammates download compiled crates \
instead of compiling them again.")
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_GENERATOR DEB)
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_STRIP_FILES ON)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_SECTION devel)
set(CPACK_DEBIAN_PACKAGE_PRIORITY optional)
# The Debian 12 libraries kiln links (dpkg-shlibdeps computes the same list
# where dpkg-dev is installed).
find_program(KILN_DPKG_SHLIBDEPS dpkg-shlibdeps)
if(KILN_DPKG_SHLIBDEPS)
  set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
else()
  set(CPACK_DEBIAN_PACKAGE_DEPENDS
    "libc6, libstdc++6, libgcc-s1, libssl3, libsqlite3-0, libsodium23, libarchive13, libyaml-cpp0.7, libcpp-httplib0.11, libtomlplusplus3")
endif()
set(CPACK_DEBIAN_PACKAGE_RECOMMENDS "cargo, rustc, gcc")
set(CPACK_DEBIAN_PACKAGE_SUGGESTS "nginx, nix-bin")
include(CPack)

// The Cargo frontend's error type.
#pragma once

#include <kiln/util/error.hpp>

namespace kiln::cargo {

// Something about the project (manifest, lock file, configuration,
// toolchain) kiln cannot work with, or will not build because cargo would
// build something else; the message names the file, key or command.
class CargoError : public Error
{
public:
  using Error::Error;
};

} // namespace kiln::cargo

// kiln-rust-unit: the builder of Cargo units in the sandbox (what `kiln
// __rust-unit` does), as a program of its own: it starts in a fraction of
// kiln's time, which every unit pays on the way to rustc.
#include <kiln/cargo/units.hpp>

int
main()
{
  return kiln::cargo::run_rust_unit();
}

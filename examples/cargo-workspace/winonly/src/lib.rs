//! Reached only through a `cfg(windows)` edge (from mylib), but a workspace member, so
//! `cargo build` in the workspace builds it on Linux too.

pub fn name() -> &'static str {
    "winonly"
}

//! helper 0.3.1. Compiled twice under resolver 2: for the host (mylib's build-dependency,
//! features [default]) and for the target (features [default, extra]).

pub fn answer() -> u32 {
    42
}

pub fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

pub fn features() -> &'static str {
    if cfg!(feature = "extra") {
        "default+extra"
    } else {
        "default"
    }
}

#[cfg(feature = "extra")]
pub fn describe() -> String {
    format!("helper {} with extra", version())
}

#[cfg(not(feature = "extra"))]
pub fn describe() -> String {
    format!("helper {}", version())
}

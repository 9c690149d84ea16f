//! The library half of a package that has both src/lib.rs and src/main.rs.

pub fn banner() -> String {
    let s = format!("toolkit {} using helper {}", env!("CARGO_PKG_VERSION"), helper::version());
    if cfg!(feature = "loud") {
        s.to_uppercase()
    } else {
        s
    }
}

#[cfg(feature = "legacy")]
pub fn legacy() -> String {
    old_helper::greet("toolkit")
}

#[cfg(not(feature = "legacy"))]
pub fn legacy() -> String {
    "legacy feature off".to_string()
}

//! helper 0.2.0: a second version of `helper` in the same graph (app depends on it as
//! `old_helper`). Not a workspace member; edition 2015.

pub fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

pub fn greet(name: &str) -> String {
    format!("old helper greets {}", name)
}

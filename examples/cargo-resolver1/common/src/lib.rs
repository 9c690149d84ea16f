//! Reports which of its features it was compiled with.

pub fn features() -> String {
    let mut f = Vec::new();
    if cfg!(feature = "build-feat") {
        f.push("build-feat");
    }
    if cfg!(feature = "dev-feat") {
        f.push("dev-feat");
    }
    if cfg!(feature = "win-feat") {
        f.push("win-feat");
    }
    if f.is_empty() {
        "(none)".to_string()
    } else {
        f.join(",")
    }
}

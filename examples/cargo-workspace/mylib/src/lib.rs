//! A library with a build script, a proc-macro dependency, a `links` dependency (mysys) and
//! platform-specific, optional dependencies.

pub use mymacro::{const_sum, Describe};

pub const ANSWER: &str = env!("MYLIB_ANSWER");

/// Lines describing everything this library saw at build time, in a fixed order.
pub fn report() -> Vec<String> {
    let mut out = vec![
        format!(
            "mylib {} by {} ({})",
            env!("CARGO_PKG_VERSION"),
            env!("CARGO_PKG_AUTHORS"),
            env!("CARGO_PKG_NAME")
        ),
        format!("mylib: features {}", features().join(",")),
        format!("mylib: features seen by its build script: {}", env!("MYLIB_BUILD_FEATURES")),
        format!("mylib: answer from build script via build-dependency helper: {ANSWER}"),
        format!("mylib: build-dependency helper features: {}", env!("MYLIB_BUILD_HELPER_FEATURES")),
        format!("mylib: DEP_MYSYS_VERSION = {}", env!("MYLIB_SYS_VERSION")),
        format!("mylib: MYSYS_MAGIC read from DEP_MYSYS_INCLUDE/mysys.h = {}", env!("MYLIB_SYS_MAGIC")),
        format!("mylib: DEP_MYSYS_INCLUDE ends with /out: {}", env!("MYLIB_SYS_INCLUDE").ends_with("/out")),
        format!("mylib: proc-macro const_sum!(1, 2, 3, 4) = {}", mymacro::const_sum!(1, 2, 3, 4)),
    ];
    out.extend(mysys::report());
    out.push(format!("mylib: helper (cfg(unix), optional, feature withhelper): {}", helper_info()));
    out.push(format!("mylib: winonly (cfg(windows)): {}", winonly_info()));
    out
}

fn features() -> Vec<&'static str> {
    let mut f = Vec::new();
    if cfg!(feature = "default") {
        f.push("default");
    }
    if cfg!(feature = "fast") {
        f.push("fast");
    }
    if cfg!(feature = "withhelper") {
        f.push("withhelper");
    }
    f
}

#[cfg(all(unix, feature = "withhelper"))]
fn helper_info() -> String {
    format!("helper {} features {}: {}", helper::version(), helper::features(), helper::describe())
}

#[cfg(not(all(unix, feature = "withhelper")))]
fn helper_info() -> String {
    "not enabled".to_string()
}

#[cfg(windows)]
fn winonly_info() -> String {
    winonly::name().to_string()
}

#[cfg(not(windows))]
fn winonly_info() -> String {
    "not on this platform".to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn answer_matches_dev_dependency() {
        assert_eq!(super::ANSWER, helper::answer().to_string());
    }
}

// Reads what mysys's build script published (`links = "mysys"` → DEP_MYSYS_*), and calls the
// build-dependency `helper` (the host copy, compiled without feature "extra").
use std::{env, fs, path::Path};

fn main() {
    let include = env::var("DEP_MYSYS_INCLUDE").expect("DEP_MYSYS_INCLUDE (mysys metadata)");
    let version = env::var("DEP_MYSYS_VERSION").expect("DEP_MYSYS_VERSION (mysys metadata)");
    let header = fs::read_to_string(Path::new(&include).join("mysys.h")).expect("mysys.h in DEP_MYSYS_INCLUDE");
    let magic = header
        .lines()
        .find_map(|l| l.strip_prefix("#define MYSYS_MAGIC "))
        .expect("MYSYS_MAGIC in mysys.h")
        .trim()
        .to_string();
    println!("cargo::rustc-env=MYLIB_SYS_INCLUDE={include}");
    println!("cargo::rustc-env=MYLIB_ANSWER={}", helper::answer());
    println!("cargo::rustc-env=MYLIB_SYS_VERSION={version}");
    println!("cargo::rustc-env=MYLIB_SYS_MAGIC={magic}");
    println!("cargo::rustc-env=MYLIB_BUILD_HELPER_FEATURES={}", helper::features());
    println!("cargo::rustc-env=MYLIB_BUILD_FEATURES={}", env::var("CARGO_CFG_FEATURE").unwrap_or_default());
    println!("cargo::rerun-if-env-changed=MYLIB_FORCE");
}

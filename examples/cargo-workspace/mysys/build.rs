// Generates Rust code and a C-style header into OUT_DIR, publishes metadata to dependents'
// build scripts (DEP_MYSYS_INCLUDE, DEP_MYSYS_VERSION) and sets a cfg and an env var.
use std::{env, fs, path::Path};

fn main() {
    let out = env::var("OUT_DIR").unwrap();
    let squares: Vec<String> = (1..=5u32).map(|i| (i * i).to_string()).collect();
    fs::write(
        Path::new(&out).join("gen.rs"),
        format!(
            "pub const GENERATED_TABLE: [u32; 5] = [{}];\n\
             pub fn generated_greeting() -> &'static str {{ \"hello from generated code\" }}\n",
            squares.join(", ")
        ),
    )
    .unwrap();
    fs::write(Path::new(&out).join("mysys.h"), "#define MYSYS_MAGIC 1234\n").unwrap();
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::metadata=include={out}");
    println!("cargo::metadata=version=1.2.3");
    println!("cargo::rustc-link-search=native={out}");
    println!("cargo::rustc-check-cfg=cfg(mysys_has_gen)");
    println!("cargo::rustc-cfg=mysys_has_gen");
    println!("cargo::rustc-env=MYSYS_BUILT_FOR={}", env::var("TARGET").unwrap());
}

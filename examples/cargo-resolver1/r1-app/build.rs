fn main() {
    println!("cargo:rustc-env=BUILD_COMMON_FEATURES={}", common::features());
}

fn main() {
    println!("common features in the build script: {}", env!("BUILD_COMMON_FEATURES"));
    println!("common features in the binary: {}", common::features());
}

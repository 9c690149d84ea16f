// Prints one line per thing the workspace exercises; the output is the same for every
// correct build on x86_64 Linux, so kiln's binary can be compared with cargo's.

#[derive(the_lib::Describe)]
struct Point {
    _x: i32,
    _y: i32,
}

fn main() {
    println!("app {} (bin {})", env!("CARGO_PKG_VERSION"), env!("CARGO_BIN_NAME"));
    for line in the_lib::report() {
        println!("{line}");
    }
    println!("app: proc-macro derive on Point: {}", Point::describe());
    println!("app: proc-macro const_sum!(2, 3, 5, 7) = {}", the_lib::const_sum!(2, 3, 5, 7));
    println!(
        "app: old_helper = helper {} (renamed dependency): {}",
        old_helper::version(),
        old_helper::greet("app")
    );
}

fn main() {
    println!("hello from a crate kiln stored");
}

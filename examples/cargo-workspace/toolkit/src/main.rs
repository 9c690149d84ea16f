// The bin half: uses its own package's library.
fn main() {
    println!("{}", toolkit::banner());
    println!("toolkit: helper features in the target graph: {}", helper::features());
    println!("toolkit: {}", toolkit::legacy());
    println!("toolkit bin {} crate {}", env!("CARGO_BIN_NAME"), env!("CARGO_CRATE_NAME"));
}

//! A `links` crate: its build script generates code (included here) and publishes metadata.

include!(concat!(env!("OUT_DIR"), "/gen.rs"));

pub const BUILT_FOR: &str = env!("MYSYS_BUILT_FOR");

#[cfg(mysys_has_gen)]
pub const HAS_GEN: bool = true;
#[cfg(not(mysys_has_gen))]
pub const HAS_GEN: bool = false;

pub fn report() -> Vec<String> {
    vec![
        format!("mysys: built for {BUILT_FOR}"),
        format!("mysys: cfg(mysys_has_gen) = {HAS_GEN}"),
        format!("mysys: generated table {GENERATED_TABLE:?}, greeting {:?}", generated_greeting()),
    ]
}

//! A configuration file: TOML text through `Config::parse`, with `${ENV}`
//! references resolved for some names and missing for others.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokun::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let env = |name: &str| match name.len() % 3 {
        0 => None,
        1 => Some(format!("value-of-{name}")),
        _ => Some(String::new()),
    };
    if let Err(error) = Config::parse(text, env) {
        let _ = error.to_string();
    }
});

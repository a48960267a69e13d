//! The config loader (`Config::from_yaml`, YAML → schema → validation) on arbitrary text: it
//! never panics, whatever the text, and each error it reports has a message. `${VAR}` names
//! resolve to a fixed value or to nothing, so expansion runs too.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sophgate::fuzzing::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let lookup = |name: &str| name.len().is_multiple_of(2).then(|| format!("v-{name}"));
    if let Err(errors) = Config::from_yaml(text, &lookup) {
        assert!(!errors.0.is_empty(), "an error with no message");
        for e in &errors.0 {
            assert!(!e.to_string().is_empty());
        }
    }
});

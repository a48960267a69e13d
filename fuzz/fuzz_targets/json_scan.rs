//! `json_scan` against serde_json, its "at least as strict" claim: whenever the one-pass scan
//! accepts a text, serde_json accepts it; the values the scan finds for top-level keys are the
//! ones serde_json reads; the body stage's peeks through the scan answer as serde_json's
//! (same accept/refuse, same fields); and the in-text renames give the tree path's result.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use sophgate::fuzzing::{
    apply_renames, json_scan, peek_chat, peek_chat_scanning, peek_model, peek_model_scanning,
    rename_fields, ChatPeek, TextRename,
};

const WANTED: [&str; 5] = [
    "model",
    "temperature",
    "max_tokens",
    "stream",
    "stream_options",
];

fn fields(
    p: &ChatPeek<'_>,
) -> (
    Option<String>,
    bool,
    bool,
    Option<bool>,
    Option<Option<bool>>,
) {
    (
        p.model.as_deref().map(str::to_owned),
        p.temperature.is_some(),
        p.max_tokens.is_some(),
        p.stream,
        p.stream_options.as_ref().map(|o| o.include_usage),
    )
}

fuzz_target!(|data: &[u8]| {
    let aliases = vec![
        ("model".to_string(), "model_id".to_string()),
        ("max_tokens".to_string(), "max_new_tokens".to_string()),
        ("a".to_string(), "b".to_string()),
    ];
    if let Some(scan) = json_scan(data, &aliases, &WANTED) {
        assert!(
            serde_json::from_slice::<serde::de::IgnoredAny>(data).is_ok(),
            "scan accepts what serde_json refuses"
        );
        // A full tree also needs UTF-8 and paired surrogates everywhere: compare where it reads.
        if let (true, Ok(Value::Object(map))) = (scan.object, serde_json::from_slice(data)) {
            for (i, key) in WANTED.iter().enumerate() {
                let found = scan.top[i].map(|(a, b)| {
                    serde_json::from_slice::<Value>(&data[a..b]).expect("a found value parses")
                });
                assert_eq!(found.as_ref(), map.get(*key), "top-level {key}");
            }
            if let Some(renames) = &scan.renames {
                let mut tree = Value::Object(map.clone());
                let changed = rename_fields(&mut tree, &aliases);
                match apply_renames(data, renames) {
                    TextRename::Unchanged => assert!(!changed, "renames missed"),
                    TextRename::Renamed(text) => {
                        let renamed: Value =
                            serde_json::from_slice(&text).expect("renamed text parses");
                        assert_eq!(renamed, tree, "in-text renames differ from the tree's");
                    }
                    TextRename::NeedsTree => {}
                }
            }
        }
    }
    let (scanned, plain) = (peek_chat_scanning(data, &aliases), peek_chat(data));
    match (&scanned, &plain) {
        (Ok((a, _)), Ok(b)) => assert_eq!(fields(a), fields(b)),
        (Err(a), Err(b)) => assert_eq!(a.message, b.message),
        _ => panic!(
            "chat peek: scan says {:?}, serde_json {:?}",
            scanned
                .as_ref()
                .map(|(p, _)| fields(p))
                .map_err(|e| &e.message),
            plain.as_ref().map(fields).map_err(|e| &e.message)
        ),
    }
    match (peek_model_scanning(data, &aliases), peek_model(data)) {
        (Ok((a, _)), Ok(b)) => assert_eq!(a, b),
        (Err(a), Err(b)) => assert_eq!(a.message, b.message),
        (a, b) => panic!(
            "model peek: scan says {:?}, serde_json {:?}",
            a.map(|(m, _)| m).map_err(|e| e.message),
            b.map_err(|e| e.message)
        ),
    }
});

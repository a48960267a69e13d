//! Plugins shipped inside the binary, so they work from any directory. Their sources live in
//! `plugins/` (where users can copy and adapt them) and are embedded at compile time.

/// `(name, source)` of every bundled plugin.
pub const BUNDLED: [(&str, &str); 4] = [
    (
        "field_aliases",
        include_str!("../../plugins/field_aliases.rhai"),
    ),
    ("headers", include_str!("../../plugins/headers.rhai")),
    (
        "sophnet_project",
        include_str!("../../plugins/sophnet_project.rhai"),
    ),
    (
        "reasoning_to_content",
        include_str!("../../plugins/reasoning_to_content.rhai"),
    ),
];

/// The source of the bundled plugin `name` ("field_aliases", "headers", "sophnet_project",
/// "reasoning_to_content"). A config path such as `plugins/headers.rhai` is not a name: strip
/// the directory and extension first if that lookup is wanted.
pub fn bundled(name: &str) -> Option<&'static str> {
    BUNDLED
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, source)| *source)
}

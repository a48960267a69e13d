//! `plugins:` (and the implicit plugin `field_aliases` stands for): where each one's source is,
//! checked readable now so that a missing or unreadable file is reported with its line.

use std::path::Path;

use super::Collector;
use crate::config::raw::RawPlugin;
use crate::config::yaml_path::{k, Segment};
use crate::config::{PluginConfig, PluginSource};

/// A plugin path: a file relative to the config's folder (or absolute, or relative to the
/// working directory), else a bundled plugin of the same file name.
fn resolve_plugin(path: &str, base_dir: &Path) -> Option<PluginSource> {
    let p = Path::new(path);
    let candidates = if p.is_absolute() {
        vec![p.to_path_buf()]
    } else {
        vec![base_dir.join(p), p.to_path_buf()]
    };
    if let Some(found) = candidates.into_iter().find(|c| c.is_file()) {
        return Some(PluginSource::File(found));
    }
    let stem = p.file_stem()?.to_str()?;
    crate::scripting::bundled(stem).map(|_| PluginSource::Bundled(stem.to_owned()))
}

/// Plugins in run order: the implicit `field_aliases` one first, then `plugins:`.
pub(super) fn plugins(
    c: &mut Collector,
    field_aliases: &[(String, String)],
    raw: Option<Vec<RawPlugin>>,
    base_dir: &Path,
) -> Vec<PluginConfig> {
    let mut plugins = Vec::new();
    if !field_aliases.is_empty() {
        let params: serde_json::Map<String, serde_json::Value> = field_aliases
            .iter()
            .map(|(f, t)| (f.clone(), serde_json::Value::String(t.clone())))
            .collect();
        plugins.push(PluginConfig {
            name: "field_aliases".into(),
            source: PluginSource::Bundled("field_aliases".into()),
            params: serde_json::Value::Object(params),
            implicit: true,
            index: None,
        });
    }
    for (i, p) in raw.unwrap_or_default().into_iter().enumerate() {
        if let Some(plugin) = plugin(c, i, p, base_dir) {
            plugins.push(plugin);
        }
    }
    plugins
}

fn plugin(c: &mut Collector, i: usize, p: RawPlugin, base_dir: &Path) -> Option<PluginConfig> {
    let at = |f: &str| vec![k("plugins"), Segment::Index(i), k(f)];
    let params = match p.params {
        None => serde_json::Value::Object(Default::default()),
        Some(v) => match serde_json::to_value(&v) {
            Ok(j) => j,
            Err(_) => {
                c.err(&at("params"), "params must be plain YAML data");
                return None;
            }
        },
    };
    let Some(source) = resolve_plugin(&p.path, base_dir) else {
        c.err(
            &at("path"),
            format!(
                "plugin file `{}` not found (relative paths start at the config file's folder; bundled: {})",
                p.path,
                crate::scripting::bundled::BUNDLED
                    .iter()
                    .map(|(n, _)| format!("plugins/{n}.rhai"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
        return None;
    };
    if let PluginSource::File(file) = &source {
        if let Err(e) = std::fs::read_to_string(file) {
            c.err(
                &at("path"),
                format!("cannot read plugin file {}: {e}", file.display()),
            );
            return None;
        }
    }
    Some(PluginConfig {
        name: p.path,
        source,
        params,
        implicit: false,
        index: Some(i),
    })
}

//! Reading what hook calls leave behind: the error a script threw, the fields of its argument,
//! and the checks that the argument still has the shape the pipeline needs (run after each
//! plugin, so a bad value is blamed on the plugin that wrote it).

use rhai::{Dynamic, EvalAltResult, Map};

use super::api::{check_headers, is_plain_data};
use super::reach::Reach;

/// The error that actually happened, under the "error in call to function ..." wrappers that
/// calls through script functions add.
pub(super) fn innermost(mut err: &EvalAltResult) -> &EvalAltResult {
    loop {
        match err {
            EvalAltResult::ErrorInFunctionCall(_, _, inner, _)
            | EvalAltResult::ErrorInModule(_, inner, _) => err = inner,
            _ => return err,
        }
    }
}

/// Reads a thrown `#{status, message}`. `status` must be an integer in 400..=599; `message`
/// defaults to the status's reason phrase.
pub(super) fn thrown(value: &Dynamic) -> Result<(u16, String), String> {
    let map = value
        .read_lock::<Map>()
        .ok_or_else(|| format!("threw {value:?}, not #{{status: 400..599, message: \"...\"}}"))?;
    let status = map
        .get("status")
        .and_then(|s| s.as_int().ok())
        .and_then(|s| u16::try_from(s).ok())
        .filter(|s| (400..=599).contains(s))
        .ok_or_else(|| format!("threw {value:?}: `status` must be an integer in 400..=599"))?;
    let message = match map.get("message") {
        None => None,
        Some(m) if m.is_unit() => None,
        Some(m) => Some(m.to_string()),
    };
    let message = message.unwrap_or_else(|| {
        http::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("error")
            .to_owned()
    });
    Ok((status, message))
}

pub(super) fn field(fields: &mut Map, name: &str) -> Dynamic {
    // Taken in place, not removed: the map is dropped whole after, and a removal would
    // rebalance its tree first.
    fields.get_mut(name).map_or(Dynamic::UNIT, std::mem::take)
}

pub(super) fn take_ctx(fields: &mut Map) -> Result<Map, String> {
    let ctx = field(fields, "ctx");
    ctx.try_cast::<Map>()
        .ok_or_else(|| String::from("ctx must be a map"))
}

pub(super) fn status_of(value: &Dynamic) -> Result<u16, String> {
    value
        .as_int()
        .ok()
        .and_then(|s| u16::try_from(s).ok())
        .filter(|s| http::StatusCode::from_u16(*s).is_ok())
        .ok_or_else(|| format!("status must be an integer in 100..=999, found {value}"))
}

pub(super) fn check_ctx(map: &Map) -> Result<(), String> {
    match map.get("ctx") {
        Some(ctx) if ctx.is_map() && is_plain_data(ctx) => Ok(()),
        Some(ctx) if ctx.is_map() => Err(String::from(
            "ctx may only hold data (no functions or closures)",
        )),
        _ => Err(String::from("ctx must be a map")),
    }
}

/// `with_headers`: the argument was given headers (the hooks can reach them).
/// Which fields of its argument a hook call was given: only those its hooks can reach (see
/// [`reach`](super::reach)), since a field a hook cannot name it can neither read nor change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Given {
    pub headers: bool,
    pub path: bool,
    pub method: bool,
    pub client_ip: bool,
    pub key: bool,
    pub status: bool,
    pub ctx: bool,
    pub drop: bool,
    /// The hooks reach nothing of their argument (see [`Reach::is_nothing`]).
    pub nothing: bool,
}

impl Given {
    /// Read once per generation: each call then tests a flag, not a name in a set.
    pub(super) fn of(reach: &Reach) -> Self {
        Self {
            headers: reach.field("headers"),
            path: reach.field("path"),
            method: reach.field("method"),
            client_ip: reach.field("client_ip"),
            key: reach.field("key"),
            status: reach.field("status"),
            ctx: reach.field("ctx"),
            drop: reach.field("drop"),
            nothing: reach.is_nothing(),
        }
    }

    /// Whether the argument is given the field `name`.
    pub(super) fn field(&self, name: &str, reach: &Reach) -> bool {
        match name {
            "headers" => self.headers,
            "path" => self.path,
            "method" => self.method,
            "client_ip" => self.client_ip,
            "key" => self.key,
            "status" => self.status,
            "ctx" => self.ctx,
            "drop" => self.drop,
            _ => reach.field(name),
        }
    }
}

/// The fields of `req` other than its headers and body that `given` and `reach` name; `ctx`
/// is moved out of `req`.
pub(super) fn request_fields(req: &mut super::api::ScriptRequest, given: Given) -> Map {
    let mut arg = Map::new();
    let (path, method, ip, key) = (&req.path, &req.method, &req.client_ip, &req.key);
    for (name, value, named) in [
        ("path", path, given.path),
        ("method", method, given.method),
        ("client_ip", ip, given.client_ip),
        ("key", key, given.key),
    ] {
        if named {
            arg.insert(name.into(), Dynamic::from(value.clone()));
        }
    }
    if given.ctx {
        arg.insert(
            "ctx".into(),
            Dynamic::from_map(std::mem::take(&mut req.ctx)),
        );
    }
    arg
}

pub(super) fn check_headers_field(map: &Map, with_headers: bool) -> Result<(), String> {
    if !with_headers {
        return Ok(());
    }
    check_headers(map.get("headers").unwrap_or(&Dynamic::UNIT))
}

pub(super) fn check_request(map: &Map, given: Given) -> Result<bool, String> {
    check_headers_field(map, given.headers)?;
    if given.ctx {
        check_ctx(map)?;
    }
    if !given.path {
        return Ok(false);
    }
    let path = map
        .get("path")
        .and_then(|p| p.read_lock::<rhai::ImmutableString>().map(|p| p.clone()))
        .ok_or_else(|| String::from("path must be a string"))?;
    if !path.starts_with('/') || http::uri::PathAndQuery::try_from(path.as_str()).is_err() {
        return Err(format!(
            "path must be a valid path starting with '/', found {path:?}"
        ));
    }
    Ok(false)
}

pub(super) fn check_response(map: &Map, given: Given) -> Result<bool, String> {
    if given.status {
        status_of(map.get("status").unwrap_or(&Dynamic::UNIT))?;
    }
    check_headers_field(map, given.headers)?;
    if given.ctx {
        check_ctx(map)?;
    }
    Ok(false)
}

pub(super) fn check_event(map: &Map, given: Given) -> Result<bool, String> {
    if given.ctx {
        check_ctx(map)?;
    }
    if !given.drop {
        return Ok(false);
    }
    match map.get("drop") {
        Some(d) if d.is_bool() => Ok(d.as_bool().unwrap_or(false)),
        Some(d) if d.is_unit() => Ok(false),
        _ => Err(String::from("drop must be true or false")),
    }
}

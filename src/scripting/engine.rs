//! The sandboxed Rhai [`Engine`]: limits, helpers, and the per-call state (plugin name and
//! wall-clock deadline) that Rhai's callbacks need but cannot receive as arguments.
//!
//! One engine is built per [`Plugins`](super::Plugins), i.e. once per config generation, and
//! shared by every request without a lock: Rhai evaluation takes `&Engine`, and everything that
//! differs between calls lives in the call's own `Scope` or in the thread-local [`ActiveCall`].

use std::cell::RefCell;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use rhai::packages::{Package, StandardPackage};
use rhai::{Array, Dynamic, Engine, EvalAltResult, ImmutableString, Map, Position, INT};
use sha2::{Digest, Sha256};

use super::api::{
    check_aliases, dynamic_to_json, json_to_dynamic, rename_keys, rename_keys_in_array,
};
use super::partial::RenameLog;

/// The hooks a plugin may define, by the names scripts use.
pub const HOOK_NAMES: [&str; 3] = ["on_request", "on_response", "on_event"];

/// Tracing target of everything scripts log, so operators can filter script output
/// (`RUST_LOG=sophgate::script=debug`) independently of the gateway's own logs.
pub const LOG_TARGET: &str = "sophgate::script";

/// Rhai checks the wall clock only every this many operations: reading the clock costs about as
/// much as a cheap Rhai operation, so checking on every one would slow all scripts noticeably.
const CLOCK_CHECK_EVERY: u64 = 16;

/// Sandbox limits, applied to every hook call.
///
/// Rhai treats 0 as "unlimited" for most of these; a sandbox must not be opened by a typo, so
/// [`build`] raises every value to at least 1 instead.
///
/// The size limits are *totals over the value being changed*: Rhai sums the lengths of all
/// strings (and the element counts of all arrays/maps) nested in the object a script assigns
/// into. `req.body.model = "x"` therefore checks the whole request, so `max_string_size` must
/// be at least the largest body the gateway accepts, or scripts fail on big requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScriptLimits {
    /// Rhai operations (roughly: expressions and statements evaluated) per hook call.
    pub max_operations: u64,
    /// Nesting of script function calls, including recursion; also bounds native stack use.
    pub max_call_levels: usize,
    /// Expression nesting at the top level of a script (checked at compile time).
    pub max_expr_depth: usize,
    /// Expression nesting inside function bodies (checked at compile time).
    pub max_function_expr_depth: usize,
    /// Total bytes of strings in one value (see the type docs).
    pub max_string_size: usize,
    /// Total array elements in one value.
    pub max_array_size: usize,
    /// Total map entries in one value.
    pub max_map_size: usize,
    /// Wall-clock budget of one hook call of one plugin (and of a plugin's top-level code at load).
    pub max_wall_time: Duration,
}

impl Default for ScriptLimits {
    /// Safe defaults that still let a script rewrite any body the gateway accepts by default
    /// (32 MiB, `limits.max_body_bytes`): hence 32 MiB of strings and a million array elements
    /// and map entries (an embeddings request may carry token arrays of that order).
    fn default() -> Self {
        Self {
            max_operations: 1_000_000,
            max_call_levels: 32,
            max_expr_depth: 64,
            max_function_expr_depth: 32,
            max_string_size: 32 * 1024 * 1024,
            max_array_size: 1_000_000,
            max_map_size: 1_000_000,
            max_wall_time: Duration::from_millis(50),
        }
    }
}

/// Builds the sandboxed engine: the standard package only (no file, network, environment or
/// module access), `eval` disabled, every limit set, `print`/`debug` and the `log_*` helpers
/// routed to tracing, and the wall-clock deadline enforced through `on_progress`.
///
/// Starts from `Engine::new_raw` rather than `Engine::new`, which would add a file module
/// resolver (`import` from disk) and a string interner whose cache sits behind a lock that
/// every evaluation takes — a lock shared by all requests.
pub fn build(limits: &ScriptLimits) -> Engine {
    let mut engine = Engine::new_raw();
    engine.register_global_module(StandardPackage::new().as_shared_module());

    engine
        .set_max_operations(limits.max_operations.max(1))
        .set_max_call_levels(limits.max_call_levels.max(1))
        .set_max_expr_depths(
            limits.max_expr_depth.max(1),
            limits.max_function_expr_depth.max(1),
        )
        .set_max_string_size(limits.max_string_size.max(1))
        .set_max_array_size(limits.max_array_size.max(1))
        .set_max_map_size(limits.max_map_size.max(1))
        .set_max_modules(0);
    // `eval` would compile new code at run time, outside the compile-time checks and hook
    // detection; nothing a plugin needs.
    engine.disable_symbol("eval");

    engine.on_progress(|ops| {
        if ops % CLOCK_CHECK_EVERY != 0 {
            return None;
        }
        let expired = with_active(|a| Instant::now() >= a.deadline).unwrap_or(false);
        expired.then(|| Dynamic::from("wall-clock budget exceeded"))
    });
    engine.on_print(|text| {
        let plugin = active_plugin();
        tracing::info!(target: LOG_TARGET, plugin = %plugin, "{text}");
    });
    engine.on_debug(|text, _source, pos| {
        let plugin = active_plugin();
        tracing::debug!(target: LOG_TARGET, plugin = %plugin, line = pos.line(), "{text}");
    });

    register_helpers(&mut engine);
    engine
}

/// Helpers scripts commonly need. None reads files, the network or the environment.
fn register_helpers(engine: &mut Engine) {
    engine.register_fn("log_debug", |msg: Dynamic| {
        tracing::debug!(target: LOG_TARGET, plugin = %active_plugin(), "{msg}");
    });
    engine.register_fn("log_info", |msg: Dynamic| {
        tracing::info!(target: LOG_TARGET, plugin = %active_plugin(), "{msg}");
    });
    engine.register_fn("log_warn", |msg: Dynamic| {
        tracing::warn!(target: LOG_TARGET, plugin = %active_plugin(), "{msg}");
    });
    engine.register_fn("log_error", |msg: Dynamic| {
        tracing::error!(target: LOG_TARGET, plugin = %active_plugin(), "{msg}");
    });

    engine.register_fn(
        "json_encode",
        |value: Dynamic| -> Result<String, Box<EvalAltResult>> {
            let json = dynamic_to_json(&value).map_err(|e| format!("json_encode: {e}"))?;
            serde_json::to_string(&json).map_err(|e| format!("json_encode: {e}").into())
        },
    );
    engine.register_fn(
        "json_decode",
        |text: &str| -> Result<Dynamic, Box<EvalAltResult>> {
            let json: serde_json::Value =
                serde_json::from_str(text).map_err(|e| format!("json_decode: {e}"))?;
            json_to_dynamic(&json).map_err(|e| format!("json_decode: {e}").into())
        },
    );

    // `value.rename_keys(#{from: to})`: recursive in-place key renaming (see
    // `api::rename_keys`), the core of the bundled field_aliases plugin.
    engine.register_fn(
        "rename_keys",
        |map: &mut Map, aliases: Map| -> Result<(), Box<EvalAltResult>> {
            rename_keys(map, &aliases).map_err(Into::into)
        },
    );
    engine.register_fn(
        "rename_keys",
        |items: &mut Array, aliases: Map| -> Result<(), Box<EvalAltResult>> {
            rename_keys_in_array(items, &aliases).map_err(Into::into)
        },
    );
    // Any other value has no keys to rename: the aliases are checked, nothing changes.
    engine.register_fn(
        "rename_keys",
        |_value: &mut Dynamic, aliases: Map| -> Result<(), Box<EvalAltResult>> {
            check_aliases(&aliases).map_err(Into::into)
        },
    );
    // The stand-in body of hooks that only rename (see `partial::RenameLog`): a `map` to
    // `type_of`, and its `rename_keys` records.
    engine.register_type_with_name::<RenameLog>("map");
    engine.register_fn(
        "rename_keys",
        |log: &mut RenameLog, aliases: Map| -> Result<(), Box<EvalAltResult>> {
            log.record(aliases).map_err(Into::into)
        },
    );

    engine.register_fn("base64_encode", |text: &str| -> String {
        base64::engine::general_purpose::STANDARD.encode(text)
    });
    engine.register_fn(
        "base64_decode",
        |text: &str| -> Result<String, Box<EvalAltResult>> {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(text.trim())
                .map_err(|e| format!("base64_decode: {e}"))?;
            String::from_utf8(bytes)
                .map_err(|_| "base64_decode: decoded bytes are not UTF-8 text".into())
        },
    );
    engine.register_fn("sha256", |text: &str| -> String {
        hex(&Sha256::digest(text.as_bytes()))
    });

    engine.register_fn("now_unix", || -> INT { unix_time().as_secs() as INT });
    engine.register_fn("now_ms", || -> INT {
        INT::try_from(unix_time().as_millis()).unwrap_or(INT::MAX)
    });

    engine.register_fn(
        "disable_hook",
        |name: ImmutableString| -> Result<(), Box<EvalAltResult>> { disable_hook(&name) },
    );
}

// === native stack ===

/// Native stack one script call level may take, measured with recursion through the deepest
/// expressions the depth limits allow: about 16 KiB in release builds, but about 128 KiB in
/// debug builds (hence Rhai's own debug default of 8 levels). Rounded up for headroom.
const STACK_PER_CALL_LEVEL: usize = if cfg!(debug_assertions) {
    160 * 1024
} else {
    24 * 1024
};

/// Stack for everything else: the caller's frames up to the hook, parsing, native helpers.
const STACK_BASE: usize = 256 * 1024;

/// Native stack a script may use under `limits`.
pub fn stack_needed(limits: &ScriptLimits) -> usize {
    limits
        .max_call_levels
        .max(1)
        .saturating_mul(STACK_PER_CALL_LEVEL)
        .saturating_add(STACK_BASE)
}

/// Runs `f` with at least `needed` bytes of native stack, moving to a fresh stack segment only
/// when the current thread has less left. A stack overflow aborts the whole process, so the
/// call-depth limit alone cannot keep a recursive script from taking down the server on a
/// thread with a small stack (2 MiB tokio workers hold 32 levels only in release builds).
pub fn with_stack<R>(needed: usize, f: impl FnOnce() -> R) -> R {
    stacker::maybe_grow(needed, needed, f)
}

fn unix_time() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

// === the active call ===

/// What Rhai callbacks need to know about the call in progress on this thread. Rhai's
/// `on_progress` and `on_print` receive no context, so the plugin name and deadline travel in a
/// thread-local instead of a lock shared between requests: a hook call runs start to finish on
/// one thread, and [`ActiveGuard`] restores the previous value when it ends.
struct ActiveCall {
    plugin: Arc<str>,
    deadline: Instant,
    /// `Some` while a plugin's top-level code runs at load time: hooks it asked to disable.
    disabled_hooks: Option<Vec<String>>,
}

thread_local! {
    static ACTIVE: RefCell<Option<ActiveCall>> = const { RefCell::new(None) };
}

/// Marks a plugin call as running on this thread until dropped.
pub struct ActiveGuard {
    previous: Option<ActiveCall>,
}

impl ActiveGuard {
    /// A hook call of `plugin` that must finish within `budget`.
    pub fn hook(plugin: &Arc<str>, budget: Duration) -> Self {
        Self::enter(ActiveCall {
            plugin: Arc::clone(plugin),
            deadline: deadline(budget),
            disabled_hooks: None,
        })
    }

    /// The load-time run of `plugin`'s top-level code, where `disable_hook` is allowed.
    pub fn load(plugin: &Arc<str>, budget: Duration) -> Self {
        Self::enter(ActiveCall {
            plugin: Arc::clone(plugin),
            deadline: deadline(budget),
            disabled_hooks: Some(Vec::new()),
        })
    }

    fn enter(call: ActiveCall) -> Self {
        let previous = ACTIVE
            .try_with(|cell| cell.try_borrow_mut().ok().and_then(|mut c| c.replace(call)))
            .ok()
            .flatten();
        Self { previous }
    }

    /// Hooks the top-level code disabled with `disable_hook(name)`.
    pub fn take_disabled_hooks(&self) -> Vec<String> {
        ACTIVE
            .try_with(|cell| {
                cell.try_borrow_mut()
                    .ok()
                    .and_then(|mut c| c.as_mut().and_then(|a| a.disabled_hooks.take()))
            })
            .ok()
            .flatten()
            .unwrap_or_default()
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        let previous = self.previous.take();
        let _ = ACTIVE.try_with(|cell| {
            if let Ok(mut c) = cell.try_borrow_mut() {
                *c = previous;
            }
        });
    }
}

fn deadline(budget: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(budget).unwrap_or(now)
}

fn with_active<T>(f: impl FnOnce(&ActiveCall) -> T) -> Option<T> {
    ACTIVE
        .try_with(|cell| cell.try_borrow().ok().and_then(|c| c.as_ref().map(f)))
        .ok()
        .flatten()
}

fn active_plugin() -> Arc<str> {
    with_active(|a| Arc::clone(&a.plugin)).unwrap_or_else(|| Arc::from("?"))
}

fn disable_hook(name: &str) -> Result<(), Box<EvalAltResult>> {
    if !HOOK_NAMES.contains(&name) {
        return Err(format!(
            "disable_hook: unknown hook '{name}' (expected one of {})",
            HOOK_NAMES.join(", ")
        )
        .into());
    }
    let recorded = ACTIVE
        .try_with(|cell| {
            cell.try_borrow_mut().ok().and_then(|mut c| {
                c.as_mut()
                    .and_then(|a| a.disabled_hooks.as_mut())
                    .map(|hooks| hooks.push(name.to_owned()))
            })
        })
        .ok()
        .flatten();
    recorded.ok_or_else(|| {
        EvalAltResult::ErrorRuntime(
            "disable_hook() may only be called from top-level code, which runs once at load".into(),
            Position::NONE,
        )
        .into()
    })
}

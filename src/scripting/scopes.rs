//! Each thread's scopes for the plugins it calls: a hook call's scope holds only the plugin's
//! constants (`params` and what its top-level code left), and building one (an allocation per
//! constant, a deep copy of `params`) cost more than the call of a hook that does nothing. A
//! script cannot change a constant, and calls rewind the scope to them, so one scope serves
//! every call of a plugin on a thread.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};

use rhai::{Dynamic, Scope};

/// Scopes kept per thread: the plugins one thread runs in a row; a plugin of an old config
/// generation is pushed out by the ones called after it.
const KEPT: usize = 8;

thread_local! {
    static SCOPES: RefCell<Vec<(u64, Scope<'static>)>> = const { RefCell::new(Vec::new()) };
}

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// A plugin id no other plugin of this process has.
pub(super) fn next_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

/// This thread's scope for plugin `id` with `constants`, taken out of the cache (so a nested
/// call cannot share it), or built.
pub(super) fn take(id: u64, constants: &[(String, Dynamic)]) -> Scope<'static> {
    let cached = SCOPES
        .try_with(|cell| {
            let mut scopes = cell.try_borrow_mut().ok()?;
            let at = scopes.iter().position(|(kept, _)| *kept == id)?;
            Some(scopes.swap_remove(at).1)
        })
        .ok()
        .flatten();
    cached.unwrap_or_else(|| {
        let mut scope = Scope::with_capacity(constants.len());
        for (name, value) in constants {
            scope.push_constant_dynamic(name.as_str(), value.clone());
        }
        scope
    })
}

/// Returns plugin `id`'s scope to the cache, if the call left it holding just its
/// `constants` constants.
pub(super) fn put(id: u64, constants: usize, scope: Scope<'static>) {
    if scope.len() != constants {
        return;
    }
    let _ = SCOPES.try_with(|cell| {
        if let Ok(mut scopes) = cell.try_borrow_mut() {
            if scopes.len() >= KEPT {
                scopes.remove(0);
            }
            scopes.push((id, scope));
        }
    });
}

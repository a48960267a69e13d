//! How one hook is called. `Engine::call_fn` builds Rhai's runtime state and its
//! function-resolution cache afresh for every call, so each native function a hook calls was
//! looked up again on every call (a cache miss, then a search of the engine's modules), and the
//! hook's argument went through Rhai's generic script-function call. Here a hook's body is kept
//! as top-level statements ([`HookBody`]) and evaluated in a scope holding the plugin's
//! constants and the argument, with the runtime state and cache that this thread keeps for the
//! hook ([`CallState`]): a function is resolved once per thread, not once per call, and the
//! argument is read back from the scope after the call (a script function's parameter is a copy
//! that `call_fn` drops), so it needs no shared cell for the caller to see what the hook
//! changed.
//!
//! What a call sees is what `call_fn` gives a hook: the plugin's constants in scope (read-only),
//! its script functions, the operation count and call depth starting afresh, `return` and
//! `exit` ending the hook.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};

use rhai::{
    ASTNode, Caches, Dynamic, Engine, EvalAltResult, GlobalRuntimeState, ImmutableString, Module,
    Position, Scope, AST,
};

/// One hook's body: its statements as the top level of an AST that also holds the plugin's
/// functions (so the body can call them), and the name of its one parameter.
pub(super) struct HookBody {
    param: ImmutableString,
    body: AST,
}

impl HookBody {
    /// The body of `ast`'s function `name` taking one parameter, if it has one.
    pub(super) fn of(ast: &AST, name: &str) -> Option<HookBody> {
        let def = ast
            .iter_fn_def()
            .find(|f| f.name == name && f.params.len() == 1)?;
        let param = def.params.first()?.clone();
        // An AST holding only that function: its body's statements are the walk's top-level
        // nodes (closures inside the body are functions of their own, left out here).
        let mut lib = Module::new();
        lib.set_script_fn(def.clone());
        let only = AST::new([], lib);
        let mut statements = Vec::new();
        only.walk(&mut |path: &[ASTNode]| {
            if let [ASTNode::Stmt(stmt)] = path {
                statements.push((*stmt).clone());
            }
            true
        });
        let mut body = AST::new(statements, ast.shared_lib().clone());
        if let Some(source) = ast.source() {
            body.set_source(source);
        }
        Some(HookBody { param, body })
    }
}

/// What one thread keeps for calling one hook of one plugin: the scope holding the plugin's
/// constants and, after them, the slot of the hook's parameter (empty between calls); Rhai's
/// runtime state (the plugin's functions in it) and its function-resolution cache.
pub(super) struct CallState {
    scope: Scope<'static>,
    /// The number of constants: the parameter's slot is the next entry.
    constants: usize,
    global: GlobalRuntimeState,
    caches: Caches,
}

impl CallState {
    fn new(engine: &Engine, ast: &AST, constants: &[(String, Dynamic)]) -> CallState {
        let mut scope = Scope::with_capacity(constants.len() + 1);
        for (name, value) in constants {
            scope.push_constant_dynamic(name.as_str(), value.clone());
        }
        let mut global = engine.new_global_runtime_state();
        global.lib.push(ast.shared_lib().clone());
        global.source = ast.source().map(ImmutableString::from);
        CallState {
            scope,
            constants: constants.len(),
            global,
            caches: Caches::new(),
        }
    }

    /// Runs `hook` with `arg` as its parameter and returns the parameter's value after it (what
    /// the hook made of its argument). The scope is left holding the constants and the
    /// parameter's emptied slot.
    pub(super) fn run(
        &mut self,
        engine: &Engine,
        hook: &HookBody,
        arg: Dynamic,
    ) -> Result<Dynamic, Box<EvalAltResult>> {
        let base = self.constants;
        let param = hook.param.as_str();
        let kept = self.scope.len() == base + 1;
        match self.scope.get_mut(param) {
            Some(slot) if kept => *slot = arg,
            _ => {
                if base >= engine.max_variables() {
                    return Err(EvalAltResult::ErrorTooManyVariables(Position::NONE).into());
                }
                self.scope.rewind(base);
                self.scope.push_dynamic(param, arg);
            }
        }
        let global = &mut self.global;
        // As for a function called by `call_fn`: its own operation count, the same call depth
        // left to its helpers, and a block scope, so that a `const` in the body stays local to
        // the call.
        global.num_operations = 0;
        global.level = 0;
        global.scope_level = 1;
        global.always_search_scope = false;
        // The one public entry that evaluates statements with a caller's runtime state and
        // cache (under the `internals` feature); `return` and `exit` end it with their value.
        #[allow(deprecated)]
        let result = engine.eval_statements_raw(
            global,
            &mut self.caches,
            &mut self.scope,
            hook.body.statements(),
        );
        // The body's own variables go first, so the parameter is the last of its name.
        self.scope.rewind(base + 1);
        let arg = match self.scope.get_mut(param) {
            Some(slot) => std::mem::take(slot),
            // A slot the script made read-only is not kept.
            None => {
                let arg = self.scope.remove::<Dynamic>(param);
                self.scope.rewind(base);
                arg.unwrap_or_default()
            }
        };
        result.map(|_| arg)
    }
}

/// States kept per thread: the hooks one thread runs in a row; a plugin of an old config
/// generation is pushed out by the ones called after it.
const KEPT: usize = 8;

thread_local! {
    static KEPT_STATES: RefCell<Vec<(u64, Box<CallState>)>> = const { RefCell::new(Vec::new()) };
}

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// Ids for a new plugin's hooks, `HOOKS` of them, no other plugin of this process has: the
/// first is the plugin's id, hook `i`'s key is `id + i`.
pub(super) fn next_id() -> u64 {
    NEXT_ID.fetch_add(HOOKS, Ordering::Relaxed)
}

/// How many hooks a plugin can define.
const HOOKS: u64 = 3;

/// This thread's call state for hook `key` of a plugin (of `ast`, with `constants`), taken out
/// of the cache (so a nested call cannot share it), or built.
pub(super) fn take(
    key: u64,
    engine: &Engine,
    ast: &AST,
    constants: &[(String, Dynamic)],
) -> Box<CallState> {
    let cached = KEPT_STATES
        .try_with(|cell| {
            let mut states = cell.try_borrow_mut().ok()?;
            let at = states.iter().position(|(kept, _)| *kept == key)?;
            Some(states.swap_remove(at).1)
        })
        .ok()
        .flatten();
    cached.unwrap_or_else(|| Box::new(CallState::new(engine, ast, constants)))
}

/// Returns hook `key`'s call state to the cache, if the call left its scope holding just the
/// constants (and the parameter's slot).
pub(super) fn put(key: u64, state: Box<CallState>) {
    if state.scope.len() > state.constants + 1 {
        return;
    }
    let _ = KEPT_STATES.try_with(|cell| {
        if let Ok(mut states) = cell.try_borrow_mut() {
            if states.len() >= KEPT {
                states.remove(0);
            }
            states.push((key, state));
        }
    });
}

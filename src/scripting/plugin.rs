//! Compiled plugins and the hook runner.
//!
//! [`Plugins::compile`] does all fallible work once per config generation: compile each script,
//! find its hooks, run its top-level code once (with `params` in scope), and keep the resulting
//! top-level variables as per-call constants. The hook methods then only evaluate: they build
//! the hook's argument once, pass that same value through every plugin in config order, and
//! convert it back once.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use rhai::{Dynamic, Engine, EvalAltResult, Map, Position, Scope, AST};
use serde_json::Value;

use super::api::{
    headers_from_dynamic, headers_to_dynamic, is_plain_data, json_to_dynamic, EventData,
    EventOutcome, ScriptEvent, ScriptRequest, ScriptResponse,
};
use super::engine::{self, ActiveGuard, HOOK_NAMES, LOG_TARGET};
use super::event_data::{self, EventInput};
use super::event_stream::EventStream;
use super::hook_call::{self, HookBody};
use super::outcome::{
    check_event, check_request, check_response, field, innermost, request_fields, status_of,
    take_ctx, thrown, Given,
};
use super::partial;
use super::reach::{self, BodyReach, Reach};

pub use super::engine::ScriptLimits;
pub use super::failure::{ScriptCompileError, ScriptFailure};
pub use super::partial::{Aliases, Renames};

/// One configured plugin, before compilation.
#[derive(Debug, Clone)]
pub struct PluginSpec {
    /// Shown in errors and logs; the config's path, or `bundled:<name>` for a bundled plugin.
    pub name: String,
    /// The Rhai source.
    pub source: String,
    /// The plugin's `params` from config (any JSON; `null` when absent).
    pub params: Value,
}

/// What the hooks of one call changed that the caller cannot see from the value alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Edited {
    /// The body differs from the one given: it must be encoded again. When `false` the body
    /// is the value it came as, and its bytes can go on untouched.
    pub body: bool,
}

/// An SSE event after the `on_event` hooks.
#[derive(Debug, Clone, PartialEq)]
pub enum EventVerdict {
    /// Send the event as it came, byte for byte.
    Unchanged,
    /// Send it with this data.
    Changed(EventData),
    /// A hook set `ev.drop = true`.
    Drop,
}

// === hooks ===

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Hook {
    Request,
    Response,
    Event,
}

impl Hook {
    const ALL: [Hook; 3] = [Hook::Request, Hook::Response, Hook::Event];

    pub(super) const fn index(self) -> usize {
        match self {
            Hook::Request => 0,
            Hook::Response => 1,
            Hook::Event => 2,
        }
    }

    const fn name(self) -> &'static str {
        HOOK_NAMES[self.index()]
    }

    /// The argument's field holding the JSON body.
    const fn body_field(self) -> &'static str {
        match self {
            Hook::Request | Hook::Response => "body",
            Hook::Event => "data",
        }
    }

    fn from_name(name: &str) -> Option<Hook> {
        Hook::ALL.into_iter().find(|h| h.name() == name)
    }
}

/// One compiled plugin.
pub(super) struct Plugin {
    /// Unique over the process's lifetime, with room for one key per hook: keys the call state
    /// of this plugin's hooks in [`hook_call`].
    id: u64,
    name: Arc<str>,
    ast: AST,
    /// `params` plus the variables its top-level code left: the constants of every call's
    /// scope (built once per thread, see [`hook_call`]).
    constants: Vec<(String, Dynamic)>,
    hooks: [bool; 3],
    /// The body of each hook it defines.
    bodies: [Option<HookBody>; 3],
    /// What each hook can reach of its argument.
    reach: [Reach; 3],
}

/// The compiled plugins of one config generation, in config order. `Send + Sync`; the hook
/// methods take `&self` and share no lock between requests.
pub struct Plugins {
    engine: Engine,
    plugins: Vec<Plugin>,
    max_wall_time: Duration,
    /// Native stack a hook call may need (see [`engine::with_stack`]).
    stack_needed: usize,
    pub(super) any_hook: [bool; 3],
    /// What the hooks of each kind can reach of their argument, joined over the plugins.
    pub(super) reach: [Reach; 3],
    /// The argument fields each kind of hook call is given (what `reach` names).
    pub(super) given: [Given; 3],
    /// See [`expected_renames`](Self::expected_renames).
    pub(super) expected_renames: Option<Vec<(String, String)>>,
}

impl fmt::Debug for Plugins {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut list = f.debug_list();
        for p in &self.plugins {
            let hooks: Vec<&str> = Hook::ALL
                .into_iter()
                .filter(|h| p.hooks[h.index()])
                .map(Hook::name)
                .collect();
            list.entry(&(&*p.name, hooks));
        }
        list.finish()
    }
}

impl Plugins {
    /// Compiles every plugin, collecting every error before failing (so `sophgate check`
    /// reports them all at once).
    pub fn compile(
        specs: Vec<PluginSpec>,
        limits: ScriptLimits,
    ) -> Result<Plugins, Vec<ScriptCompileError>> {
        let engine = engine::build(&limits);
        let stack_needed = engine::stack_needed(&limits);
        let mut plugins = Vec::with_capacity(specs.len());
        let mut errors = Vec::new();
        for spec in specs {
            let loaded =
                engine::with_stack(stack_needed, || load(&engine, spec, limits.max_wall_time));
            match loaded {
                Ok(plugin) => plugins.push(plugin),
                Err(mut e) => errors.append(&mut e),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let mut any_hook = [false; 3];
        let mut reach: [Reach; 3] = Default::default();
        for hook in Hook::ALL {
            let i = hook.index();
            any_hook[i] = plugins.iter().any(|p| p.hooks[i]);
            for p in plugins.iter().filter(|p| p.hooks[i]) {
                reach[i].add(&p.reach[i]);
            }
        }
        let given = Hook::ALL.map(|h| Given::of(&reach[h.index()]));
        let r = Hook::Request.index();
        let calls =
            (plugins.iter().filter(|p| p.hooks[r])).map(|p| (&p.constants[..], &p.reach[r]));
        let renamed_only = *reach[r].body() == BodyReach::Renamed;
        let expected_renames = partial::expected_renames(calls).filter(|_| renamed_only);
        Ok(Plugins {
            engine,
            plugins,
            max_wall_time: limits.max_wall_time,
            stack_needed,
            any_hook,
            reach,
            given,
            expected_renames,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.plugins.is_empty()
    }

    /// Plugin names in run order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.plugins.iter().map(|p| &*p.name)
    }

    pub fn has_on_request(&self) -> bool {
        self.any_hook[Hook::Request.index()]
    }

    pub fn has_on_response(&self) -> bool {
        self.any_hook[Hook::Response.index()]
    }

    pub fn has_on_event(&self) -> bool {
        self.any_hook[Hook::Event.index()]
    }

    /// Runs every plugin's `on_request` in config order. Scripts see and may change
    /// `req.body`, `req.headers`, `req.path` and `req.ctx`; `req.method`, `req.client_ip` and
    /// `req.key` are informative (changes to them are ignored). On error `req` is left partly
    /// updated (its `ctx` is gone); the request must then be answered with the failure.
    pub fn on_request(&self, req: &mut ScriptRequest) -> Result<(), ScriptFailure> {
        self.on_request_edited(req).map(|_| ())
    }

    /// [`on_request`](Self::on_request), telling whether the body changed.
    pub fn on_request_edited(&self, req: &mut ScriptRequest) -> Result<Edited, ScriptFailure> {
        self.on_request_renames(req).map(|(edited, _)| edited)
    }

    /// [`on_request_edited`](Self::on_request_edited), also returning the aliases the hooks
    /// renamed the body's keys with when they only rename (see
    /// [`request_body_renamed_only`](Self::request_body_renamed_only)), in the order applied
    /// (already applied to `req.body`).
    pub fn on_request_renames(
        &self,
        req: &mut ScriptRequest,
    ) -> Result<(Edited, Renames), ScriptFailure> {
        let Some(first) = self.first_with(Hook::Request) else {
            return Ok((Edited::default(), Vec::new()));
        };
        if self.run_blind(Hook::Request)? {
            return Ok((Edited::default(), Vec::new()));
        }
        let reach = &self.reach[Hook::Request.index()];
        let given = self.given[Hook::Request.index()];
        let mut arg = request_fields(req, given);
        if given.headers {
            arg.insert("headers".into(), headers_to_dynamic(&req.headers));
        }
        let body = partial::to_script(&req.body, reach.body())
            .map_err(|e| self.fail(first, Hook::Request, "cannot convert the body", &e))?;
        if let Some(body) = body {
            arg.insert("body".into(), body);
        }
        let check = |map: &Map| check_request(map, given);
        let (last, mut fields) = self.run_chain(first, Hook::Request, arg, &check)?;
        let fail = |what: &str, e: &str| self.fail(last, Hook::Request, what, e);

        if given.headers {
            let headers = field(&mut fields, "headers");
            req.headers =
                headers_from_dynamic(&headers).map_err(|e| fail("bad req.headers", &e))?;
        }
        if given.path {
            req.path = field(&mut fields, "path")
                .into_immutable_string()
                .map_err(|t| fail("bad req.path", t))?
                .to_string();
        }
        let mut after = field(&mut fields, "body");
        let renames = partial::take_renames(&mut after, reach.body());
        let body = match &renames {
            Some(log) => partial::apply_renames(&mut req.body, log),
            None if reach.body_writes() => partial::merge(&mut req.body, after, reach.body()),
            None => Ok(false),
        }
        .map_err(|e| fail("bad req.body", &e))?;
        if given.ctx {
            req.ctx = take_ctx(&mut fields).map_err(|e| fail("bad req.ctx", &e))?;
        }
        Ok((Edited { body }, renames.unwrap_or_default()))
    }

    /// Runs every plugin's `on_response` in config order (non-streamed answers). Scripts may
    /// change `res.status`, `res.headers`, `res.body` and `res.ctx`.
    pub fn on_response(&self, res: &mut ScriptResponse) -> Result<(), ScriptFailure> {
        self.on_response_edited(res).map(|_| ())
    }

    /// [`on_response`](Self::on_response), telling whether the body changed.
    pub fn on_response_edited(&self, res: &mut ScriptResponse) -> Result<Edited, ScriptFailure> {
        let Some(first) = self.first_with(Hook::Response) else {
            return Ok(Edited::default());
        };
        if self.run_blind(Hook::Response)? {
            return Ok(Edited::default());
        }
        let reach = &self.reach[Hook::Response.index()];
        let given = self.given[Hook::Response.index()];
        let mut arg = Map::new();
        if given.status {
            arg.insert("status".into(), Dynamic::from(rhai::INT::from(res.status)));
        }
        if given.ctx {
            arg.insert(
                "ctx".into(),
                Dynamic::from_map(std::mem::take(&mut res.ctx)),
            );
        }
        if given.headers {
            arg.insert("headers".into(), headers_to_dynamic(&res.headers));
        }
        let body = partial::to_script(&res.body, reach.body())
            .map_err(|e| self.fail(first, Hook::Response, "cannot convert the body", &e))?;
        if let Some(body) = body {
            arg.insert("body".into(), body);
        }
        let check = |map: &Map| check_response(map, given);
        let (last, mut fields) = self.run_chain(first, Hook::Response, arg, &check)?;
        let fail = |what: &str, e: &str| self.fail(last, Hook::Response, what, e);

        if given.status {
            res.status =
                status_of(&field(&mut fields, "status")).map_err(|e| fail("bad res.status", &e))?;
        }
        if given.headers {
            let headers = field(&mut fields, "headers");
            res.headers =
                headers_from_dynamic(&headers).map_err(|e| fail("bad res.headers", &e))?;
        }
        let body = if reach.body_writes() {
            partial::merge(&mut res.body, field(&mut fields, "body"), reach.body())
                .map_err(|e| fail("bad res.body", &e))?
        } else {
            false
        };
        if given.ctx {
            res.ctx = take_ctx(&mut fields).map_err(|e| fail("bad res.ctx", &e))?;
        }
        Ok(Edited { body })
    }

    /// Runs every plugin's `on_event` in config order for one SSE event. A hook may change
    /// `ev.data` and `ev.ctx`, or set `ev.drop = true`, which drops the event and skips the
    /// remaining plugins. The status is already sent by then, so the caller can only turn a
    /// failure (even [`ScriptFailure::Thrown`]) into an error event that ends the stream.
    pub fn on_event(&self, ev: &mut ScriptEvent) -> Result<EventOutcome, ScriptFailure> {
        match self.run_on_event(EventInput::Data(&ev.data), &mut ev.ctx)? {
            EventVerdict::Drop => return Ok(EventOutcome::Drop),
            EventVerdict::Changed(data) => ev.data = data,
            EventVerdict::Unchanged => {}
        }
        Ok(EventOutcome::Keep)
    }

    /// [`on_event`](Self::on_event) for an event's `data:` text, parsed only as far as a hook
    /// can reach `ev.data`; an event the hooks left as it was comes back
    /// [`EventVerdict::Unchanged`]. A stream's events go through
    /// [`on_stream_event`](Self::on_stream_event), which reuses what one event built for the next.
    pub fn on_event_text(&self, data: &str, ctx: &mut Map) -> Result<EventVerdict, ScriptFailure> {
        let mut stream = EventStream::new(std::mem::take(ctx));
        let verdict = self.on_stream_event(data, &mut stream);
        *ctx = stream.into_ctx();
        verdict
    }

    pub(super) fn run_on_event(
        &self,
        input: EventInput<'_>,
        ctx: &mut Map,
    ) -> Result<EventVerdict, ScriptFailure> {
        let Some(first) = self.first_with(Hook::Event) else {
            return Ok(EventVerdict::Unchanged);
        };
        if self.run_blind(Hook::Event)? {
            return Ok(EventVerdict::Unchanged);
        }
        let reach = &self.reach[Hook::Event.index()];
        let given = self.given[Hook::Event.index()];
        let mut arg = Map::new();
        if given.ctx {
            arg.insert("ctx".into(), Dynamic::from_map(std::mem::take(ctx)));
        }
        if given.drop {
            arg.insert("drop".into(), Dynamic::FALSE);
        }
        let mut before = None;
        if *reach.body() != BodyReach::Untouched {
            let (value, data) = event_data::to_script(input, reach)
                .map_err(|e| self.fail(first, Hook::Event, "cannot convert the data", &e))?;
            arg.insert("data".into(), value);
            before = data;
        }
        let check = |map: &Map| check_event(map, given);
        let (last, mut fields) = self.run_chain(first, Hook::Event, arg, &check)?;
        let fail = |what: &str, e: &str| self.fail(last, Hook::Event, what, e);

        if given.ctx {
            *ctx = take_ctx(&mut fields).map_err(|e| fail("bad ev.ctx", &e))?;
        }
        if field(&mut fields, "drop").as_bool().unwrap_or(false) {
            return Ok(EventVerdict::Drop);
        }
        let Some(before) = before else {
            return Ok(EventVerdict::Unchanged);
        };
        event_data::verdict(before, field(&mut fields, "data"), reach.body())
            .map_err(|e| fail("bad ev.data", &e))
    }

    /// When no hook of this kind uses its argument at all (a hook that does nothing, or only
    /// logs or counts): calls each with an empty map, which nothing reads back, and says so.
    /// Nothing is built, shared, checked or merged for such a call.
    pub(super) fn run_blind(&self, hook: Hook) -> Result<bool, ScriptFailure> {
        if !self.given[hook.index()].nothing {
            return Ok(false);
        }
        for plugin in self.plugins.iter().filter(|p| p.hooks[hook.index()]) {
            let _ = self.call(plugin, hook, Dynamic::from_map(Map::new()))?;
        }
        Ok(true)
    }

    pub(super) fn first_with(&self, hook: Hook) -> Option<&Plugin> {
        self.plugins.iter().find(|p| p.hooks[hook.index()])
    }

    /// Passes one map through every plugin defining `hook`, checking after each that it still
    /// has the right shape (so a bad value is blamed on the plugin that wrote it). `check`
    /// returns `true` to stop early (a dropped event). Returns the last plugin run, and the
    /// map's fields.
    fn run_chain<'a>(
        &'a self,
        first: &'a Plugin,
        hook: Hook,
        arg: Map,
        check: &dyn Fn(&Map) -> Result<bool, String>,
    ) -> Result<(&'a Plugin, Map), ScriptFailure> {
        let (last, mut arg) = self.run_each(first, hook, Dynamic::from_map(arg), check)?;
        // A hook that captured its argument in a closure left it in a shared cell: the fields
        // are moved out rather than the cell unwrapped, so that if the closure was stored inside
        // the argument, that cycle is broken here, not leaked.
        let fields = if arg.is_shared() {
            arg.write_lock::<Map>()
                .map(|mut map| std::mem::take(&mut *map))
        } else {
            arg.try_cast::<Map>()
        };
        match fields {
            Some(fields) => Ok((last, fields)),
            None => Err(self.fail(last, hook, "bad result", "the argument is not a map")),
        }
    }

    /// [`run_chain`](Self::run_chain) over an argument given as a value, which it returns as the
    /// last hook left it, with the last plugin run.
    pub(super) fn run_each<'a>(
        &'a self,
        first: &'a Plugin,
        hook: Hook,
        mut arg: Dynamic,
        check: &dyn Fn(&Map) -> Result<bool, String>,
    ) -> Result<(&'a Plugin, Dynamic), ScriptFailure> {
        let mut last = first;
        for plugin in self.plugins.iter().filter(|p| p.hooks[hook.index()]) {
            arg = self.call(plugin, hook, arg)?;
            last = plugin;
            let verdict = match arg.read_lock::<Map>() {
                Some(map) => check(&map),
                None => Err(format!(
                    "the hook replaced its argument with {}",
                    arg.type_name()
                )),
            };
            match verdict {
                Ok(false) => {}
                Ok(true) => break,
                Err(e) => return Err(self.fail(plugin, hook, "bad result", &e)),
            }
        }
        Ok((last, arg))
    }

    /// Calls one hook of one plugin with a scope holding just its constants, under the
    /// wall-clock budget, and returns its argument as the hook left it. Top-level statements are
    /// not re-run: they ran once at load. The call state is this thread's for the plugin (see
    /// [`hook_call`]); a script cannot change a constant, so every call sees the same scope.
    fn call(&self, plugin: &Plugin, hook: Hook, arg: Dynamic) -> Result<Dynamic, ScriptFailure> {
        let Some(body) = &plugin.bodies[hook.index()] else {
            return Ok(arg);
        };
        let key = plugin.id + hook.index() as u64;
        let mut state = hook_call::take(key, &self.engine, &plugin.ast, &plugin.constants);
        let result = engine::with_stack(self.stack_needed, || {
            let _active = ActiveGuard::hook(&plugin.name, self.max_wall_time);
            state.run(&self.engine, body, arg)
        });
        hook_call::put(key, state);
        result.map_err(|err| self.script_failure(plugin, hook, &err))
    }

    /// Maps a Rhai error to the client-facing failure, logging the details (which never reach
    /// the client).
    fn script_failure(&self, plugin: &Plugin, hook: Hook, err: &EvalAltResult) -> ScriptFailure {
        let inner = innermost(err);
        let pos = inner.position();
        let reason = match inner {
            EvalAltResult::ErrorRuntime(value, _) => match thrown(value) {
                Ok((status, message)) => {
                    tracing::debug!(
                        target: LOG_TARGET, plugin = %plugin.name, hook = hook.name(),
                        line = pos.line(), column = pos.position(), status,
                        "script answered the request: {message}"
                    );
                    return ScriptFailure::Thrown { status, message };
                }
                Err(why) => why,
            },
            EvalAltResult::ErrorTerminated(..) => format!(
                "exceeded its wall-clock budget of {} ms",
                self.max_wall_time.as_millis()
            ),
            _ => String::from("runtime error"),
        };
        tracing::error!(
            target: LOG_TARGET, plugin = %plugin.name, hook = hook.name(),
            line = pos.line(), column = pos.position(),
            "script error: {reason}: {err}"
        );
        ScriptFailure::Error {
            plugin: plugin.name.to_string(),
        }
    }

    /// Logs a failure found outside Rhai (a hook left a value of the wrong shape).
    pub(super) fn fail(
        &self,
        plugin: &Plugin,
        hook: Hook,
        what: &str,
        detail: &str,
    ) -> ScriptFailure {
        tracing::error!(
            target: LOG_TARGET, plugin = %plugin.name, hook = hook.name(),
            "script error: {what}: {detail}"
        );
        ScriptFailure::Error {
            plugin: plugin.name.to_string(),
        }
    }
}

// === loading ===

fn load(
    engine: &Engine,
    spec: PluginSpec,
    budget: Duration,
) -> Result<Plugin, Vec<ScriptCompileError>> {
    let name: Arc<str> = Arc::from(spec.name);
    let mut ast = engine
        .compile(&spec.source)
        .map_err(|e| vec![ScriptCompileError::parse(&name, &e)])?;
    ast.set_source(&*name);

    let mut errors = Vec::new();
    let mut hooks = [false; 3];
    for f in ast.iter_functions() {
        if let Some(hook) = Hook::from_name(f.name) {
            if f.params.len() == 1 {
                hooks[hook.index()] = true;
            } else {
                errors.push(ScriptCompileError::new(
                    &name,
                    Position::NONE,
                    format!(
                        "hook {} must take exactly one parameter, found {}",
                        f.name,
                        f.params.len()
                    ),
                ));
            }
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }

    let params = json_to_dynamic(&spec.params).map_err(|e| {
        vec![ScriptCompileError::new(
            &name,
            Position::NONE,
            format!("cannot convert params: {e}"),
        )]
    })?;

    // Top-level code runs once, here, with `params` in scope: it can validate params (`throw`
    // fails the load with its line) and precompute tables. Whatever variables it leaves become
    // read-only constants of every hook call.
    let mut scope = Scope::new();
    scope.push_constant_dynamic("params", params);
    let (run, disabled) = {
        let active = ActiveGuard::load(&name, budget);
        let run = engine.run_ast_with_scope(&mut scope, &ast);
        (run, active.take_disabled_hooks())
    };
    if let Err(err) = run {
        let inner = innermost(&err);
        let message = match inner {
            EvalAltResult::ErrorRuntime(value, _) => format!("top-level code threw: {value}"),
            _ => format!("top-level code failed: {err}"),
        };
        return Err(vec![ScriptCompileError::new(
            &name,
            inner.position(),
            message,
        )]);
    }

    let mut constants = Vec::with_capacity(scope.len());
    for (var, _, value) in scope.iter_raw() {
        if is_plain_data(value) {
            constants.push((var.to_owned(), value.clone()));
        } else {
            errors.push(ScriptCompileError::new(
                &name,
                Position::NONE,
                format!(
                    "top-level variable `{var}` holds a function or closure; only data \
                     can be kept between hook calls"
                ),
            ));
        }
    }

    let reach = Hook::ALL.map(|h| reach::of_hook(&ast, h.name(), h.body_field()));
    let defined_any = hooks.iter().any(|h| *h);
    for hook in disabled.iter().filter_map(|h| Hook::from_name(h)) {
        hooks[hook.index()] = false;
    }
    if !defined_any {
        errors.push(ScriptCompileError::new(
            &name,
            Position::NONE,
            format!(
                "defines none of the hooks {} (each taking one parameter)",
                HOOK_NAMES.join(", ")
            ),
        ));
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let bodies = Hook::ALL.map(|h| {
        if hooks[h.index()] {
            HookBody::of(&ast, h.name())
        } else {
            None
        }
    });
    for hook in Hook::ALL {
        if hooks[hook.index()] && bodies[hook.index()].is_none() {
            errors.push(ScriptCompileError::new(
                &name,
                Position::NONE,
                format!("hook {} has no body to run", hook.name()),
            ));
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Plugin {
        id: hook_call::next_id(),
        name,
        ast,
        constants,
        hooks,
        bodies,
        reach,
    })
}

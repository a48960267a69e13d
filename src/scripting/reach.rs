//! What of its argument a hook can reach, read once from the compiled script, so a call builds
//! only that: a hook that never names `req.headers` gets no headers converted, one that never
//! names `req.body` no body, and one that only names `req.body.model` and `req.body.user` a
//! body map holding just those two fields.
//!
//! The reading is conservative: the argument counts as wholly reachable as soon as the hook
//! uses it in any way other than `arg.<name>…` — passed to a function, stored in a variable,
//! captured by a closure, indexed with `arg[...]`, used as a method receiver, printed. Within
//! the body (`body` or `data`), only `body.<field>…`, `body["<field>"]…`, `type_of(body)` and
//! `"<field>" in body` keep the reach to named fields; a field once named is converted whole.
//! A body used only as `body.rename_keys(<aliases>)` (and in `type_of`) is not converted at
//! all: the renaming is recorded and applied to the JSON value (see [`BodyReach::Renamed`]).
//! A script cannot reach a value except through a variable naming it (function parameters
//! are copies, `eval` is disabled), so what is not named cannot be observed and need not be
//! converted.

use std::collections::{BTreeMap, BTreeSet};

use rhai::{ASTNode, Expr, Stmt, AST};

/// How much of the body (`req.body`, `res.body`, `ev.data`) a hook can reach.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum BodyReach {
    /// Never named: the body is not converted at all.
    #[default]
    Untouched,
    /// Only these top-level fields of a JSON object (possibly none: `type_of(req.body)`), each
    /// as far as [`Part`] says.
    Fields(BTreeMap<String, Part>),
    /// Only `body.rename_keys(aliases)` (and `type_of(body)`): the renaming is recorded and
    /// applied to the JSON value itself, which is never converted.
    Renamed,
    /// The whole value.
    Whole,
}

impl BodyReach {
    fn add(&mut self, other: &BodyReach) {
        match (&mut *self, other) {
            (_, BodyReach::Untouched) | (BodyReach::Whole, _) => {}
            (BodyReach::Fields(mine), BodyReach::Fields(theirs)) => add_parts(mine, theirs),
            // `type_of` alone (no field) sees nothing a renaming changes.
            (BodyReach::Renamed, BodyReach::Fields(f)) if f.is_empty() => {}
            (BodyReach::Renamed, BodyReach::Renamed) => {}
            (BodyReach::Fields(f), BodyReach::Renamed) if f.is_empty() => {
                *self = BodyReach::Renamed;
            }
            // A renaming moves fields another hook names: both need the whole body.
            (BodyReach::Fields(_), BodyReach::Renamed) | (BodyReach::Renamed, _) => {
                *self = BodyReach::Whole;
            }
            (me, other) => *me = other.clone(),
        }
    }
}

/// What hooks reach of one value inside the body: a chain of constant property names and
/// indices (`body.choices[0].delta.content`) reaches only the values along it; where it ends,
/// or goes on with anything else (a method, a computed index), the value there is reached whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    /// All of it.
    Whole,
    /// Only these properties of an object (a value of any other type is reached whole).
    Props(BTreeMap<String, Part>),
    /// Only the elements at these indices of an array (a value of any other type: whole).
    Items(BTreeMap<usize, Part>),
}

impl Part {
    fn add(&mut self, other: &Part) {
        match (&mut *self, other) {
            (Part::Whole, _) => {}
            (Part::Props(mine), Part::Props(theirs)) => add_parts(mine, theirs),
            (Part::Items(mine), Part::Items(theirs)) => add_parts(mine, theirs),
            (me, _) => *me = Part::Whole,
        }
    }
}

fn add_parts<K: Ord + Clone>(mine: &mut BTreeMap<K, Part>, theirs: &BTreeMap<K, Part>) {
    for (key, part) in theirs {
        match mine.get_mut(key) {
            Some(have) => have.add(part),
            None => {
                mine.insert(key.clone(), part.clone());
            }
        }
    }
}

/// What a hook (or every hook of one kind, joined) can reach of its argument.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reach {
    /// The argument escapes: every field and the whole body.
    whole: bool,
    /// Top-level fields of the argument the hook names.
    fields: BTreeSet<String>,
    body: BodyReach,
    /// Whether the hook may change the body (assigns along a path into it, calls a method on
    /// any part of it, or reaches it whole): when not, nothing is merged back.
    body_writes: bool,
    /// The argument of each `body.rename_keys(<arg>)` call, in source order: the variable's
    /// name when it is a plain variable, else `None`. Only a guess at what a call passes (a
    /// local variable may shadow a constant, a call may not run): see
    /// [`Plugins::expected_renames`](super::Plugins::expected_renames).
    rename_args: Vec<Option<String>>,
}

impl Reach {
    /// Everything: what an argument that escapes needs.
    pub fn everything() -> Self {
        Reach {
            whole: true,
            fields: BTreeSet::new(),
            body: BodyReach::Whole,
            body_writes: true,
            rename_args: Vec::new(),
        }
    }

    /// The arguments of the hook's `body.rename_keys(<arg>)` calls (see the field).
    pub fn rename_args(&self) -> &[Option<String>] {
        &self.rename_args
    }

    /// Whether the hook may change the body (see the field).
    pub fn body_writes(&self) -> bool {
        self.body_writes
    }

    /// Whether the argument escapes the hook (stored, passed on, captured): then it can be
    /// reached by any path, and may outlive the call.
    pub fn escapes(&self) -> bool {
        self.whole
    }

    /// Whether the hook never uses its argument.
    pub fn is_nothing(&self) -> bool {
        *self == Reach::default()
    }

    /// Whether the hook can reach the argument's field `name`.
    pub fn field(&self, name: &str) -> bool {
        self.whole || self.fields.contains(name)
    }

    /// What the hook can reach of the body.
    pub fn body(&self) -> &BodyReach {
        &self.body
    }

    /// Adds what `other` reaches.
    pub fn add(&mut self, other: &Reach) {
        self.whole |= other.whole;
        self.fields.extend(other.fields.iter().cloned());
        self.body.add(&other.body);
        self.body_writes |= other.body_writes;
        self.rename_args.extend(other.rename_args.iter().cloned());
    }
}

/// What `hook` (a one-parameter function of `ast`) can reach of its argument, whose body field
/// is called `body_field`. A hook the script does not define reaches nothing.
pub fn of_hook(ast: &AST, hook: &str, body_field: &str) -> Reach {
    let Some(param) = ast
        .iter_fn_def()
        .find(|f| f.name == hook && f.params.len() == 1)
        .and_then(|f| f.params.first().cloned())
    else {
        return Reach::default();
    };
    // A script may define its own `type_of` or `contains`: then those calls can see the body.
    let special_calls = !ast
        .iter_functions()
        .any(|f| f.name == "type_of" || f.name == "contains" || f.name == RENAME_KEYS);
    let mut only_hook = ast.clone();
    only_hook.clear_statements();
    only_hook.retain_functions(|_, _, name, n| name == hook && n == 1);

    let mut reach = Reach::default();
    let (mut uses, mut explained, mut escapes) = (0usize, 0usize, false);
    only_hook.walk(&mut |path: &[ASTNode]| {
        let Some(node) = path.last() else {
            return true;
        };
        match node {
            ASTNode::Stmt(Stmt::Share(names)) => {
                escapes |= names.iter().any(|(id, _)| id.name == param);
            }
            ASTNode::Expr(Expr::Variable(v, ..)) if v.1 == param => uses += 1,
            // `f!(...)` runs `f` in the caller's scope, where the argument is visible.
            ASTNode::Stmt(Stmt::FnCall(call, _))
            | ASTNode::Expr(Expr::FnCall(call, _) | Expr::MethodCall(call, _))
                if call.capture_parent_scope =>
            {
                escapes = true;
            }
            ASTNode::Expr(e @ Expr::Dot(x, ..)) if is_variable(&x.lhs, &param) => {
                if let Some((name, rest)) = chain_head(&x.rhs) {
                    explained += 1;
                    if name == body_field {
                        let parent = path.len().checked_sub(2).and_then(|i| path.get(i));
                        let bare = BareUse {
                            node: e,
                            parent,
                            special_calls,
                        };
                        let assigned = matches!(
                            bare.parent,
                            Some(ASTNode::Stmt(Stmt::Assignment(a))) if std::ptr::eq(&a.1.lhs, *e)
                        );
                        let calls = rest_has_call(rest);
                        let used = body_use(rest, &bare);
                        if used == BodyReach::Renamed {
                            reach.rename_args.push(rename_arg(rest));
                        }
                        reach.body_writes |= assigned || calls || used == BodyReach::Whole;
                        reach.body.add(&used);
                    }
                    reach.fields.insert(name.to_owned());
                }
            }
            _ => {}
        }
        true
    });
    if escapes || uses != explained {
        Reach::everything()
    } else {
        reach
    }
}

fn is_variable(expr: &Expr, name: &str) -> bool {
    matches!(expr, Expr::Variable(v, ..) if v.1 == name)
}

/// What follows `arg.<name>` in a chain.
#[derive(Clone, Copy)]
enum Rest<'a> {
    /// Nothing: `arg.<name>` is used as a value.
    End,
    /// `arg.<name>.<rhs>`.
    Dot(&'a Expr),
    /// `arg.<name>[<rhs>]`.
    Index(&'a Expr),
}

/// The property a chain after `arg.` starts with, and what follows it; `None` for a method
/// call (`arg.f()` hands the whole argument to `f` as `this`).
fn chain_head(rhs: &Expr) -> Option<(&str, Rest<'_>)> {
    match rhs {
        Expr::Property(p, _) => Some((p.2.as_str(), Rest::End)),
        Expr::Dot(x, ..) => property_name(&x.lhs).map(|n| (n, Rest::Dot(&x.rhs))),
        Expr::Index(x, ..) => property_name(&x.lhs).map(|n| (n, Rest::Index(&x.rhs))),
        _ => None,
    }
}

fn property_name(expr: &Expr) -> Option<&str> {
    match expr {
        Expr::Property(p, _) => Some(p.2.as_str()),
        _ => None,
    }
}

/// The `arg.body` node and what it sits in, for a bare use of the body.
struct BareUse<'a, 'n> {
    node: &'a Expr,
    parent: Option<&'a ASTNode<'n>>,
    special_calls: bool,
}

/// The helper whose call on the body is recorded rather than run on script values.
pub(crate) const RENAME_KEYS: &str = "rename_keys";

/// What `arg.body` followed by `rest` reaches of the body.
fn body_use(rest: Rest<'_>, bare: &BareUse<'_, '_>) -> BodyReach {
    match rest {
        Rest::Dot(Expr::MethodCall(call, _))
            if bare.special_calls
                && call.name == RENAME_KEYS
                && call.args.len() == 1
                && !call.is_qualified() =>
        {
            BodyReach::Renamed
        }
        Rest::End => bare_body_use(bare),
        rest => match chain_part(rest) {
            Part::Props(fields) => BodyReach::Fields(fields),
            Part::Whole | Part::Items(_) => BodyReach::Whole,
        },
    }
}

/// The variable a `rename_keys` call (`rest`, as [`body_use`] matched it) passes, if its
/// argument is a plain variable.
fn rename_arg(rest: Rest<'_>) -> Option<String> {
    let Rest::Dot(Expr::MethodCall(call, _)) = rest else {
        return None;
    };
    match call.args.first() {
        Some(Expr::Variable(v, ..)) if v.2.is_empty() => Some(v.1.to_string()),
        _ => None,
    }
}

/// What a chain reaches of the value it has got to, `rest` being what follows that value.
fn chain_part(rest: Rest<'_>) -> Part {
    let one = |key: &str, then| Part::Props(BTreeMap::from([(key.to_owned(), chain_part(then))]));
    match rest {
        Rest::End => Part::Whole,
        Rest::Dot(next) => match next {
            Expr::Property(p, _) => one(p.2.as_str(), Rest::End),
            Expr::Dot(x, ..) => {
                property_name(&x.lhs).map_or(Part::Whole, |n| one(n, Rest::Dot(&x.rhs)))
            }
            Expr::Index(x, ..) => {
                property_name(&x.lhs).map_or(Part::Whole, |n| one(n, Rest::Index(&x.rhs)))
            }
            // A method call: the value is its receiver.
            _ => Part::Whole,
        },
        Rest::Index(next) => {
            let (key, then) = match next {
                Expr::Dot(x, ..) => (&x.lhs, Rest::Dot(&x.rhs)),
                Expr::Index(x, ..) => (&x.lhs, Rest::Index(&x.rhs)),
                key => (key, Rest::End),
            };
            match key {
                Expr::StringConstant(s, _) => one(s.as_str(), then),
                Expr::IntegerConstant(i, _) => usize::try_from(*i).map_or(Part::Whole, |i| {
                    Part::Items(BTreeMap::from([(i, chain_part(then))]))
                }),
                // A computed or negative index may name any element.
                _ => Part::Whole,
            }
        }
    }
}

/// Whether a chain calls anything (a method may change the value it is called on).
fn rest_has_call(rest: Rest<'_>) -> bool {
    let next = match rest {
        Rest::End => return false,
        Rest::Dot(next) | Rest::Index(next) => next,
    };
    match next {
        Expr::Dot(x, ..) | Expr::Index(x, ..) => {
            matches!(x.lhs, Expr::MethodCall(..) | Expr::FnCall(..))
                || rest_has_call(Rest::Dot(&x.rhs))
        }
        Expr::MethodCall(..) | Expr::FnCall(..) => true,
        _ => false,
    }
}

/// `type_of(arg.body)` sees only the type, and `"<field>" in arg.body` (a call to `contains`)
/// only that field; any other bare use sees the whole body.
fn bare_body_use(bare: &BareUse<'_, '_>) -> BodyReach {
    let Some(ASTNode::Expr(Expr::FnCall(call, _))) = bare.parent else {
        return BodyReach::Whole;
    };
    if !bare.special_calls || call.is_qualified() {
        return BodyReach::Whole;
    }
    let args = &call.args;
    let is_node = |e: &Expr| std::ptr::eq(e, bare.node);
    match (call.name.as_str(), args.first(), args.get(1), args.len()) {
        ("type_of", Some(a), None, 1) if is_node(a) => BodyReach::Fields(BTreeMap::new()),
        ("contains", Some(a), Some(Expr::StringConstant(s, _)), 2) if is_node(a) => {
            BodyReach::Fields(BTreeMap::from([(s.to_string(), Part::Whole)]))
        }
        _ => BodyReach::Whole,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reach(src: &str) -> Reach {
        let engine = rhai::Engine::new_raw();
        let ast = engine.compile(src).unwrap();
        of_hook(&ast, "on_request", "body")
    }

    fn fields(names: &[&str]) -> BodyReach {
        BodyReach::Fields(names.iter().map(|s| (s.to_string(), Part::Whole)).collect())
    }

    fn props(parts: Vec<(&str, Part)>) -> Part {
        Part::Props(parts.into_iter().map(|(k, p)| (k.to_owned(), p)).collect())
    }

    fn items(parts: Vec<(usize, Part)>) -> Part {
        Part::Items(parts.into_iter().collect())
    }

    #[test]
    fn named_fields_only() {
        let r = reach("fn on_request(req) { let m = req.body.model; req.body.user = m; }");
        assert_eq!(r.body(), &fields(&["model", "user"]));
        assert!(r.field("body") && !r.field("headers"));

        let r = reach(r#"fn on_request(req) { req.body["model"]; req.body.messages[0].content }"#);
        let messages = items(vec![(0, props(vec![("content", Part::Whole)]))]);
        let expected = props(vec![("messages", messages), ("model", Part::Whole)]);
        assert_eq!(r.body(), &BodyReach::Fields(expected_fields(expected)));

        let r = reach(r#"fn on_request(req) { req.body["tools"][0]; req.body.m.len() }"#);
        let expected = props(vec![
            ("m", Part::Whole),
            ("tools", items(vec![(0, Part::Whole)])),
        ]);
        assert_eq!(r.body(), &BodyReach::Fields(expected_fields(expected)));

        let r =
            reach(r#"fn on_request(req) { if type_of(req.body) == "map" && "n" in req.body {} }"#);
        assert_eq!(r.body(), &fields(&["n"]));
    }

    fn expected_fields(part: Part) -> BTreeMap<String, Part> {
        match part {
            Part::Props(fields) => fields,
            _ => BTreeMap::new(),
        }
    }

    #[test]
    fn nested_paths_reach_only_what_they_name() {
        let r = reach(
            r#"fn on_event(ev) { if ev.data.choices[0].delta.content == "" { ev.ctx.e = 1; } }"#,
        );
        assert_eq!(r, Reach::default(), "on_event is not on_request");
        let engine = rhai::Engine::new_raw();
        let ast = engine
            .compile(r#"fn on_event(ev) { ev.data.choices[0].delta.content = "x"; ev.data["id"]; ev.data.choices[1]["delta"].role }"#)
            .unwrap();
        let r = of_hook(&ast, "on_event", "data");
        let choices = items(vec![
            (
                0,
                props(vec![("delta", props(vec![("content", Part::Whole)]))]),
            ),
            (
                1,
                props(vec![("delta", props(vec![("role", Part::Whole)]))]),
            ),
        ]);
        let expected = props(vec![("choices", choices), ("id", Part::Whole)]);
        assert_eq!(r.body(), &BodyReach::Fields(expected_fields(expected)));

        // A computed or negative index, a method or a whole use below: whole from there on.
        let r = reach("fn on_request(req) { let i = 0; req.body.messages[i].content }");
        assert_eq!(r.body(), &fields(&["messages"]));
        let r = reach("fn on_request(req) { req.body.messages[-1].content }");
        assert_eq!(r.body(), &fields(&["messages"]));
        let r = reach("fn on_request(req) { req.body.messages[0].len(); req.body.messages[0].x }");
        let expected = props(vec![("messages", items(vec![(0, Part::Whole)]))]);
        assert_eq!(r.body(), &BodyReach::Fields(expected_fields(expected)));
        let r = reach("fn on_request(req) { req.body.a.b; req.body.a[0] }");
        assert_eq!(r.body(), &fields(&["a"]));
    }

    #[test]
    fn writes_are_told_from_reads() {
        for src in [
            "fn on_request(req) { let m = req.body.model; }",
            r#"fn on_request(req) { if req.body.messages[0].content == "" { req.ctx.e = 1; } }"#,
            r#"fn on_request(req) { let t = type_of(req.body); let n = "n" in req.body; }"#,
            "fn on_request(req) { req.headers.x = req.body.model; }",
        ] {
            assert!(!reach(src).body_writes(), "{src}");
        }
        for src in [
            "fn on_request(req) { req.body.model = 1; }",
            "fn on_request(req) { req.body.messages[0].content += \"!\"; }",
            "fn on_request(req) { req.body.tags.push(1); }",
            "fn on_request(req) { req.body.messages[0].content.clear(); }",
            "fn on_request(req) { req.body = #{}; }",
            "fn on_request(req) { let b = req.body; }",
            "fn on_request(req) { f(req); } fn f(r) { }",
        ] {
            assert!(reach(src).body_writes(), "{src}");
        }
        assert!(!Reach::default().body_writes());
    }

    #[test]
    fn headers_only_reaches_no_body() {
        let r = reach(r#"fn on_request(req) { req.headers["x-tag"] = "a"; req.path; }"#);
        assert_eq!(r.body(), &BodyReach::Untouched);
        assert!(r.field("headers") && r.field("path") && !r.field("body"));
        assert_eq!(reach("fn on_request(req) { }"), Reach::default());
        assert_eq!(reach("fn other(req) { req }"), Reach::default());
    }

    #[test]
    fn escapes_reach_everything() {
        for src in [
            "fn on_request(req) { let r = req; }",
            "fn on_request(req) { helper(req) }  fn helper(x) { x.body }",
            "fn on_request(req) { req.f() }",
            r#"fn on_request(req) { req["body"] }"#,
            "fn on_request(req) { let f = || req.body.x; f.call() }",
            "fn on_request(req) { print(req) }",
            r#"fn on_request(req) { `${req}` }"#,
            "fn on_request(req) { peek!() } fn peek() { req.body }",
            "fn on_request(req) { for k in req.keys() {} }",
        ] {
            assert_eq!(reach(src), Reach::everything(), "{src}");
        }
    }

    #[test]
    fn whole_body_uses() {
        for src in [
            "fn on_request(req) { req.body = #{} }",
            "fn on_request(req) { let b = req.body; }",
            "fn on_request(req) { req.body.remove(\"x\") }",
            "fn on_request(req) { req.body.rename_keys(#{}).x }",
            "fn on_request(req) { req.body.rename_keys() }",
            "fn on_request(req) { req.body.rename_keys(#{}) } fn rename_keys(a) { this.x = a }",
            "fn on_request(req) { req.body[k] }",
            "fn on_request(req) { json_encode(req.body) }",
            "fn on_request(req) { for k in req.body.keys() {} }",
            "fn on_request(req) { contains(req.body, \"a\") } fn contains(x, y) { x }",
        ] {
            let r = reach(src);
            assert_eq!(r.body(), &BodyReach::Whole, "{src}");
        }
    }

    #[test]
    fn rename_keys_alone_is_recorded() {
        let src = r#"fn on_request(req) {
            if type_of(req.body) == "map" { req.body.rename_keys(#{a: "b"}); }
        }"#;
        assert_eq!(reach(src).body(), &BodyReach::Renamed);
        let mut r = reach(src);
        r.add(&reach("fn on_request(req) { let t = type_of(req.body); }"));
        assert_eq!(r.body(), &BodyReach::Renamed);
        r.add(&reach(src));
        assert_eq!(r.body(), &BodyReach::Renamed);
        r.add(&reach("fn on_request(req) { req.body.model }"));
        assert_eq!(r.body(), &BodyReach::Whole);
        let mut r = reach("fn on_request(req) { req.body.model }");
        r.add(&reach(src));
        assert_eq!(r.body(), &BodyReach::Whole);
        // The argument naming the body again sees it whole.
        let r = reach("fn on_request(req) { req.body.rename_keys(req.body) }");
        assert_eq!(r.body(), &BodyReach::Whole);
    }

    #[test]
    fn rename_arguments_are_named_when_plain_variables() {
        let r = reach("fn on_request(req) { req.body.rename_keys(params); }");
        assert_eq!(r.rename_args(), [Some("params".into())]);
        let r = reach(r#"fn on_request(req) { req.body.rename_keys(#{a: "b"}); }"#);
        assert_eq!(r.rename_args(), [None]);
        let r = reach("fn on_request(req) { req.body.rename_keys(x); req.body.rename_keys(y) }");
        assert_eq!(r.rename_args(), [Some("x".into()), Some("y".into())]);
        assert!(reach("fn on_request(req) { req.body.model }")
            .rename_args()
            .is_empty());
    }

    #[test]
    fn joined_reach() {
        let mut r = reach("fn on_request(req) { req.body.a }");
        r.add(&reach("fn on_request(req) { req.body.b; req.headers }"));
        assert_eq!(r.body(), &fields(&["a", "b"]));
        assert!(r.field("headers"));
        r.add(&reach("fn on_request(req) { req.body = 1 }"));
        assert_eq!(r.body(), &BodyReach::Whole);
    }
}

//! What the generation's hooks can reach of their argument, as the request path asks it:
//! whether a body must be parsed for them, which fields to build, which renames to expect.

use super::plugin::{Hook, Plugins};
use super::reach::BodyReach;

impl Plugins {
    /// Whether an `on_request` hook can reach `req.body`: only then must the body be parsed.
    pub fn request_body_reached(&self) -> bool {
        self.body_reached(Hook::Request)
    }

    /// Whether an `on_request` hook can reach the argument's field `name` (`path`, `key`, …).
    pub fn request_reaches(&self, name: &str) -> bool {
        let i = Hook::Request.index();
        self.given[i].field(name, &self.reach[i])
    }

    /// Whether the `on_request` hooks use `req.body` only to rename keys in it
    /// (`req.body.rename_keys(aliases)`, `type_of(req.body)`): a JSON object body then need
    /// not be parsed for them; [`on_request_renames`](Self::on_request_renames) says which
    /// aliases to apply to its text.
    pub fn request_body_renamed_only(&self) -> bool {
        self.any_hook[Hook::Request.index()]
            && *self.reach[Hook::Request.index()].body() == BodyReach::Renamed
    }

    /// When the `on_request` hooks only rename, the aliases they most likely rename with: the
    /// constant (`params`) their one `rename_keys` call passes. A guess (a local may shadow it):
    /// the body phase's scan looks for these keys, used only if the hooks' renames are these.
    pub fn expected_renames(&self) -> Option<&[(String, String)]> {
        self.expected_renames.as_deref()
    }

    /// Whether an `on_response` hook can reach `res.body`.
    pub fn response_body_reached(&self) -> bool {
        self.body_reached(Hook::Response)
    }

    /// What the hooks of kind `index` (0 request, 1 response, 2 event) reach of the body.
    #[cfg(test)]
    pub(crate) fn body_reach(&self, index: usize) -> &BodyReach {
        self.reach[index].body()
    }

    /// Whether the hooks of kind `index` may change the body.
    #[cfg(test)]
    pub(crate) fn body_writes(&self, index: usize) -> bool {
        self.reach[index].body_writes()
    }

    pub(super) fn body_reached(&self, hook: Hook) -> bool {
        self.any_hook[hook.index()] && *self.reach[hook.index()].body() != BodyReach::Untouched
    }
}

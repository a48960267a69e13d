//! Path → route. Methods are checked by the pipeline, after the ACL, so a refused client
//! learns nothing about which methods a route takes.

use http::Method;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'a> {
    /// `/health`: liveness, no auth.
    Health,
    /// `/v1/models`
    Models,
    /// `/v1/chat/completions`
    ChatCompletions,
    /// Any other `/v1/<rest>`, forwarded under the upstream base path.
    V1(&'a str),
    NotFound,
}

impl Route<'_> {
    /// The `route` label of the metrics and the end record.
    pub fn label(&self) -> &'static str {
        use crate::observe::finished::route;
        match self {
            Route::Health => route::HEALTH,
            Route::Models => route::MODELS,
            Route::ChatCompletions => route::CHAT,
            Route::V1(_) => route::PASSTHROUGH,
            Route::NotFound => route::OTHER,
        }
    }

    pub fn allows(&self, method: &Method) -> bool {
        match self {
            Route::Health | Route::Models => method == Method::GET || method == Method::HEAD,
            Route::ChatCompletions => method == Method::POST,
            // What the OpenAI API uses (files and batches: GET, POST, DELETE); anything else
            // (PUT, PATCH, TRACE, CONNECT, …) is not the API and is not forwarded.
            Route::V1(_) => matches!(*method, Method::GET | Method::POST | Method::DELETE),
            Route::NotFound => false,
        }
    }
}

pub fn route(path: &str) -> Route<'_> {
    let trimmed = if path.len() > 1 {
        path.trim_end_matches('/')
    } else {
        path
    };
    match trimmed {
        "/health" | "/healthz" => Route::Health,
        "/v1/models" => Route::Models,
        "/v1/chat/completions" => Route::ChatCompletions,
        _ => match trimmed.strip_prefix("/v1/") {
            Some(rest) if is_safe_rest(rest) => Route::V1(rest),
            _ => Route::NotFound,
        },
    }
}

/// Rejects dot segments and empty segments so a path can never climb out of the base path.
fn is_safe_rest(rest: &str) -> bool {
    !rest.is_empty()
        && rest.split('/').all(|seg| {
            let lower = seg.to_ascii_lowercase();
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && !seg.contains('\\')
                && !lower.contains("%2e")
                && !lower.contains("%2f")
                && !lower.contains("%5c")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(route("/health"), Route::Health);
        assert_eq!(route("/v1/models"), Route::Models);
        assert_eq!(route("/v1/chat/completions/"), Route::ChatCompletions);
        assert_eq!(route("/v1/embeddings"), Route::V1("embeddings"));
        assert_eq!(route("/v1/models/gpt-4"), Route::V1("models/gpt-4"));
        assert_eq!(route("/v1/../admin"), Route::NotFound);
        assert_eq!(route("/v1/a/%2e%2e/b"), Route::NotFound);
        assert_eq!(route("/v1/a//b"), Route::NotFound);
        assert_eq!(route("/"), Route::NotFound);
        assert_eq!(route("/v2/x"), Route::NotFound);
    }

    #[test]
    fn passthrough_takes_get_post_and_delete_only() {
        let v1 = route("/v1/files/f-1");
        for m in [Method::GET, Method::POST, Method::DELETE] {
            assert!(v1.allows(&m), "{m}");
        }
        for m in [
            "PUT", "PATCH", "HEAD", "OPTIONS", "TRACE", "CONNECT", "PROPFIND",
        ] {
            let m = Method::from_bytes(m.as_bytes()).unwrap();
            assert!(!v1.allows(&m), "{m}");
        }
    }
}

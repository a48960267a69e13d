//! Memory per request: the server boxes the request future (hyper would otherwise keep room for
//! it in every open connection, idle or streaming), so its size is allocated and moved once per
//! request. Rare, heavy paths (token fetches, model lists, admin reloads) are boxed inside it to
//! keep it small; this guards that.

use crate::common::*;
use bytes::Bytes;
use http_body_util::Full;
use sophgate::tools::mock::MockOptions;

#[tokio::test]
async fn the_request_future_stays_small() {
    let extra = "credentials:\n  fetched:\n    type: command\n    command: [\"echo\", \"tok\"]\nupstreams:\n  other:\n    base_url: \"http://127.0.0.1:9/v1\"\n    credential: fetched\n";
    let env = start(extra, MockOptions::default()).await;
    let req = http::Request::post("/v1/chat/completions")
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    let fut = sophgate::gateway::handle(env.runtime.current(), [127, 0, 0, 1].into(), req);
    let size = std::mem::size_of_val(&fut);
    // 20 KB before the heavy paths were boxed; ~4.4 KB after.
    assert!(size < 8 * 1024, "request future is {size} bytes");
}

//! Request ids: every API request has one — the client's `x-request-id`
//! when it sends a usable one, else a new `req_…` — in the tracing span
//! its log lines carry (background generations included) and in the
//! response's `x-request-id` header.

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

/// The header, both ways.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest client id taken as is.
const MAX_LEN: usize = 128;

/// The client's id when it is short, visible ASCII; else a fresh one.
fn request_id(given: Option<&HeaderValue>) -> String {
    given
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= MAX_LEN && v.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(|| crate::types::new_id("req"), str::to_owned)
}

/// Middleware: see the module docs.
pub async fn assign(req: Request, next: Next) -> Response {
    let id = request_id(req.headers().get(&X_REQUEST_ID));
    let span = tracing::info_span!("request", request_id = %id, method = %req.method(), path = %req.uri().path());
    let mut resp = next.run(req).instrument(span).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(X_REQUEST_ID.clone(), v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_usable_client_id_is_kept_and_anything_else_replaced() {
        let v = |s: &'static str| HeaderValue::from_static(s);
        assert_eq!(request_id(Some(&v("abc-123"))), "abc-123");
        assert!(request_id(None).starts_with("req_"));
        assert!(request_id(Some(&v(""))).starts_with("req_"));
        assert!(request_id(Some(&v("has space"))).starts_with("req_"));
        let long = HeaderValue::from_str(&"x".repeat(MAX_LEN + 1)).unwrap();
        assert!(request_id(Some(&long)).starts_with("req_"));
    }
}

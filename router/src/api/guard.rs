//! Checks every API request passes before a handler sees it, each refusal
//! an OpenAI-shaped error:
//! - a request head within bounds: URI (414) and headers (431);
//! - with `host_check` (no API keys, bound to loopback), a loopback `Host`
//!   (421): a web page's DNS-rebound name cannot reach the server;
//! - a `POST` with a body says `Content-Type: application/json` (415):
//!   browsers send form and text bodies across origins without asking, JSON
//!   they don't, so a page cannot start generations on a local server. (A
//!   bodiless `POST`, such as a cancel, names an unguessable id instead.)

use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::SharedState;
use crate::error::ApiError;

/// Longest request URI accepted.
pub const MAX_URI_BYTES: usize = 8 * 1024;
/// Most header bytes (names and values) accepted.
pub const MAX_HEADER_BYTES: usize = 32 * 1024;
/// Most header fields accepted.
pub const MAX_HEADERS: usize = 100;

fn refuse(status: StatusCode, message: String) -> Response {
    ApiError::Http { status, message }.into_response()
}

/// Middleware: the checks in the module docs, in that order.
pub async fn check(State(st): State<SharedState>, req: Request, next: Next) -> Response {
    let uri = req.uri().to_string().len();
    if uri > MAX_URI_BYTES {
        return refuse(
            StatusCode::URI_TOO_LONG,
            format!("The request URI is {uri} bytes; at most {MAX_URI_BYTES} are accepted."),
        );
    }
    let headers = req.headers();
    let bytes: usize = headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len())
        .sum();
    if headers.len() > MAX_HEADERS || bytes > MAX_HEADER_BYTES {
        return refuse(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            format!(
                "The request has {} headers of {bytes} bytes; at most {MAX_HEADERS} headers \
                 of {MAX_HEADER_BYTES} bytes are accepted.",
                headers.len()
            ),
        );
    }
    if st.config.host_check {
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri().host())
            .unwrap_or("");
        if !is_loopback_host(host) {
            return refuse(
                StatusCode::MISDIRECTED_REQUEST,
                format!(
                    "Host '{host}' is not this server: without API keys it answers only \
                     localhost, 127.0.0.1 and [::1]."
                ),
            );
        }
    }
    if req.method() == Method::POST
        && has_body(headers)
        && !is_json(headers.get(header::CONTENT_TYPE))
    {
        return refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Send the request body as JSON with 'Content-Type: application/json' \
             (curl: -H 'Content-Type: application/json')."
                .into(),
        );
    }
    next.run(req).await
}

/// Whether the request announces a body (a length above 0, or chunks).
fn has_body(headers: &header::HeaderMap) -> bool {
    if headers.contains_key(header::TRANSFER_ENCODING) {
        return true;
    }
    match headers.get(header::CONTENT_LENGTH) {
        None => false,
        Some(v) => v.to_str().map_or(true, |v| v.trim() != "0"),
    }
}

/// `application/json`, optionally with parameters (`; charset=utf-8`).
fn is_json(value: Option<&header::HeaderValue>) -> bool {
    value
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
}

/// `localhost`, `127.0.0.1` or `[::1]`, with or without a port.
fn is_loopback_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map_or(host, |(name, port)| {
            if port.chars().all(|c| c.is_ascii_digit()) {
                name
            } else {
                host
            }
        })
    };
    name.eq_ignore_ascii_case("localhost") || name == "127.0.0.1" || name == "::1"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts_with_or_without_ports() {
        for ok in [
            "localhost",
            "LOCALHOST:8080",
            "127.0.0.1",
            "127.0.0.1:80",
            "[::1]",
            "[::1]:8080",
        ] {
            assert!(is_loopback_host(ok), "{ok}");
        }
        for bad in [
            "",
            "evil.example",
            "evil.example:8080",
            "127.0.0.1.evil.example",
            "localhost.evil",
            "10.0.0.1:8080",
        ] {
            assert!(!is_loopback_host(bad), "{bad}");
        }
    }

    #[test]
    fn json_content_types() {
        let v = |s: &'static str| Some(header::HeaderValue::from_static(s));
        assert!(is_json(v("application/json").as_ref()));
        assert!(is_json(v("Application/JSON; charset=utf-8").as_ref()));
        assert!(!is_json(v("text/plain").as_ref()));
        assert!(!is_json(v("application/x-www-form-urlencoded").as_ref()));
        assert!(!is_json(None));
    }
}

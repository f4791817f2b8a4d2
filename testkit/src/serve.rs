//! Serving an axum app (the router's API) on a free local port from inside a
//! test or benchmark process.

use axum::serve::ListenerExt;

/// Serves `app` on 127.0.0.1 with a random port until the task is aborted;
/// returns its base URL and the task.
pub async fn serve(app: axum::Router) -> std::io::Result<(String, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    // Without TCP_NODELAY, small SSE frames wait for delayed ACKs (~40 ms each).
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((url, task))
}

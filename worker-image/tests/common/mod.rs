//! The HTTP side of the fake API servers of `fake_api.rs` and `conformance.rs`: HTTP/1.1 with
//! keep-alive, just enough for kube's client. What each request is answered with is the test's.

use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// One request as the fake server read it.
pub struct Request {
    pub method: String,
    /// Path and query, as on the request line.
    pub target: String,
    pub content_type: String,
    pub body: Vec<u8>,
}

/// Serves every connection to `listener` in a task of its own, answering with `answer(&state, request)`.
pub fn spawn_server<S: Send + 'static>(
    listener: TcpListener,
    state: Arc<Mutex<S>>,
    answer: fn(&Mutex<S>, Request) -> (u16, Value),
) {
    tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else { return };
            let state = state.clone();
            tokio::spawn(serve(sock, move |request| answer(&state, request)));
        }
    });
}

/// Serves one connection until the client closes it: each request is answered with the status
/// code and JSON body `answer` returns for it.
async fn serve(sock: TcpStream, mut answer: impl FnMut(Request) -> (u16, Value)) {
    let (r, mut w) = sock.into_split();
    let mut r = BufReader::new(r);
    while let Some(request) = read_request(&mut r).await {
        let (code, reply) = answer(request);
        let text = reply.to_string();
        let head =
            format!("HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", text.len());
        if w.write_all(head.as_bytes()).await.is_err() || w.write_all(text.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// The next request on the connection; `None` once it is closed or broken.
async fn read_request(r: &mut (impl AsyncBufRead + Unpin)) -> Option<Request> {
    let mut request_line = String::new();
    if r.read_line(&mut request_line).await.unwrap_or(0) == 0 {
        return None;
    }
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let target = parts.next().unwrap_or_default().to_string();
    let mut length = 0usize;
    let mut content_type = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).await.unwrap_or(0) == 0 {
            return None;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            match k.to_ascii_lowercase().as_str() {
                "content-length" => length = v.trim().parse().unwrap_or(0),
                "content-type" => content_type = v.trim().to_string(),
                _ => {}
            }
        }
    }
    let mut body = vec![0; length];
    r.read_exact(&mut body).await.ok()?;
    Some(Request { method, target, content_type, body })
}

//! The CLI's side of the admin API: one HTTP/1.1 request over the daemon's Unix socket.

use std::path::Path;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the daemon at {socket}: {cause} (is `invited serve` running with this config?)")]
    Connect {
        socket: String,
        cause: std::io::Error,
    },
    #[error("talking to the daemon: {0}")]
    Protocol(String),
    #[error("{message}")]
    Api {
        status: u16,
        message: String,
        field: Option<String>,
    },
}

pub async fn request(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<Value, ClientError> {
    let (status, body) = exchange(socket, method, path, body).await?;
    let v: Value = serde_json::from_slice(&body)
        .map_err(|e| ClientError::Protocol(format!("status {status}, unreadable body: {e}")))?;
    if status >= 400 {
        return Err(api_error(status, &v));
    }
    Ok(v)
}

/// A request whose successful answer is bytes, not JSON (the backup); errors are still JSON.
pub async fn request_bytes(socket: &Path, path: &str) -> Result<Vec<u8>, ClientError> {
    let (status, body) = exchange(socket, "GET", path, None).await?;
    if status >= 400 {
        let v: Value = serde_json::from_slice(&body).unwrap_or_default();
        return Err(api_error(status, &v));
    }
    Ok(body.to_vec())
}

fn api_error(status: u16, v: &Value) -> ClientError {
    ClientError::Api {
        status,
        message: v["error"].as_str().unwrap_or("request failed").to_string(),
        field: v["field"].as_str().map(str::to_string),
    }
}

async fn exchange(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<(u16, Bytes), ClientError> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|cause| ClientError::Connect {
            socket: socket.display().to_string(),
            cause,
        })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| ClientError::Protocol(e.to_string()))?;
    tokio::spawn(conn);
    let bytes = body
        .map(|b| serde_json::to_vec(b).unwrap_or_default())
        .unwrap_or_default();
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "invited")
        .header("content-type", "application/json")
        .header("x-invited-client", "cli")
        .body(Full::new(Bytes::from(bytes)))
        .map_err(|e| ClientError::Protocol(e.to_string()))?;
    let res = sender
        .send_request(req)
        .await
        .map_err(|e| ClientError::Protocol(e.to_string()))?;
    let status = res.status().as_u16();
    let body = res
        .into_body()
        .collect()
        .await
        .map_err(|e| ClientError::Protocol(e.to_string()))?
        .to_bytes();
    Ok((status, body))
}

//! The relay's admin API over one kept-alive HTTP/1.1 connection.

use std::net::SocketAddr;

use anyhow::Result;
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;

pub struct Admin {
    send: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    addr: SocketAddr,
    token: String,
}

impl Admin {
    pub async fn connect(addr: SocketAddr, token: String) -> Result<Admin> {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(conn);
        Ok(Admin { send, addr, token })
    }

    /// One call; the status and the JSON answer (`null` if not JSON).
    pub async fn call(&mut self, method: Method, uri: &str, body: Option<Value>) -> Result<(StatusCode, Value)> {
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header(http::header::HOST, self.addr.to_string())
            .header(http::header::AUTHORIZATION, format!("Bearer {}", self.token))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.map(|b| b.to_string()).unwrap_or_default())))?;
        self.send.ready().await?;
        let resp = self.send.send_request(req).await?;
        let status = resp.status();
        let text = resp.into_body().collect().await?.to_bytes();
        Ok((status, serde_json::from_slice(&text).unwrap_or(Value::Null)))
    }
}

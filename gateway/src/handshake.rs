//! Relay tunnels arriving at the gateway: accept one, run the Routehub
//! handshake, then hand the session to its control loop
//! ([`crate::control`]).

use std::sync::Arc;
use std::time::Instant;

use ring::rand::{SecureRandom, SystemRandom};
use tokio::time::{Instant as Deadline, timeout, timeout_at};
use tracing::Instrument;
use tunnel_proto::handshake::{ServerEvent, ServerHandshake};
use tunnel_proto::io::{expect_frame, write_frame};
use tunnel_proto::limits::{HANDSHAKE_TIMEOUT, MAX_SESSIONS_PER_KEY};
use tunnel_proto::{Error as ProtoError, Frame, RejectCode, Tunnel, TunnelStream};

use crate::State;
use crate::metrics::OutcomeLabel;
use crate::session::Session;

fn random<const N: usize>() -> Result<[u8; N], ProtoError> {
    let mut out = [0u8; N];
    SystemRandom::new().fill(&mut out).map_err(|_| ProtoError::Rejected {
        code: RejectCode::Internal,
        message: "the gateway's random source failed".into(),
    })?;
    Ok(out)
}

/// Accepts QUIC connections until shutdown.
pub(crate) async fn accept_quic(endpoint: quinn::Endpoint, state: Arc<State>) {
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => match i { Some(i) => i, None => break },
            _ = state.shutdown.cancelled() => break,
        };
        // Unauthenticated connections hold memory until their handshake
        // deadline: count them against the tunnel limit from the start.
        let Ok(permit) = state.tunnel_permits.clone().try_acquire_owned() else {
            incoming.refuse();
            continue;
        };
        let state = state.clone();
        let remote = incoming.remote_address();
        // One deadline from the first packet to `Welcome`, QUIC handshake
        // included: an unauthenticated peer holds a slot that long at most.
        let deadline = Deadline::now() + HANDSHAKE_TIMEOUT;
        tokio::spawn(
            async move {
                let _permit = permit;
                let connecting = match incoming.accept() {
                    Ok(c) => c,
                    Err(e) => return tracing::debug!(error = %e, "QUIC connection refused"),
                };
                match timeout_at(deadline, connecting).await {
                    Ok(Ok(conn)) => serve(Tunnel::from_quic(conn), state, deadline).await,
                    Ok(Err(e)) => tracing::debug!(error = %e, "QUIC handshake failed"),
                    Err(_) => tracing::debug!("QUIC handshake timed out"),
                }
            }
            .instrument(tracing::info_span!("relay", %remote, transport = "quic")),
        );
    }
}

/// Runs one relay session to its end. The Routehub handshake must be
/// done by `deadline`, set when the connection arrived (so the transport's
/// own handshake counts against [`HANDSHAKE_TIMEOUT`] too).
pub(crate) async fn serve(tunnel: Tunnel, state: Arc<State>, deadline: Deadline) {
    match handshake(&tunnel, &state, deadline).await {
        Ok((session, ctrl)) => {
            let outcome = OutcomeLabel { outcome: "ok" };
            state.metrics.handshakes.get_or_create(&outcome).inc();
            // Relays open only the control stream; anything else is reset.
            let extra = session.tunnel.clone();
            tokio::spawn(async move {
                while let Ok(Some(stream)) = extra.accept_stream().await {
                    drop(stream)
                }
            });
            let span = tracing::info_span!("session", id = session.id, key = %session.key);
            crate::control::run(session, ctrl, state).instrument(span).await;
        }
        Err(e) => {
            let outcome = OutcomeLabel {
                outcome: reject_label(e.reject_code()),
            };
            state.metrics.handshakes.get_or_create(&outcome).inc();
            tracing::info!(error = %e, "relay handshake failed");
            // Give the relay a moment to read the Reject and close first.
            let _ = timeout(std::time::Duration::from_secs(1), tunnel.closed()).await;
            tunnel.close("rejected");
        }
    }
}

fn reject_label(code: RejectCode) -> &'static str {
    match code {
        RejectCode::UnknownKey => "unknown_key",
        RejectCode::HostnameNotAllowed => "hostname_not_allowed",
        RejectCode::HostnameTaken => "hostname_taken",
        RejectCode::BadProof => "bad_proof",
        RejectCode::UnsupportedVersion => "unsupported_version",
        RejectCode::Timeout => "timeout",
        RejectCode::Draining => "draining",
        RejectCode::Internal => "internal",
        RejectCode::TooManySessions => "too_many_sessions",
        _ => "malformed",
    }
}

async fn handshake(
    tunnel: &Tunnel,
    state: &State,
    deadline: Deadline,
) -> Result<(Arc<Session>, TunnelStream), ProtoError> {
    let timed_out = |_| ProtoError::HandshakeTimeout(HANDSHAKE_TIMEOUT);
    let mut ctrl = timeout_at(deadline, tunnel.accept_stream())
        .await
        .map_err(timed_out)??
        .ok_or_else(|| ProtoError::Closed("no control stream".into()))?;
    ctrl.prioritize();
    let result = timeout_at(deadline, exchange(tunnel, &mut ctrl, state))
        .await
        .map_err(timed_out);
    match result.and_then(|r| r) {
        Ok(session) => Ok((session, ctrl)),
        Err(e) => {
            let reject = Frame::Reject {
                code: e.reject_code(),
                message: e.to_string(),
            };
            let _ = timeout(std::time::Duration::from_secs(1), write_frame(&mut ctrl, &reject)).await;
            Err(e)
        }
    }
}

async fn exchange(tunnel: &Tunnel, ctrl: &mut TunnelStream, state: &State) -> Result<Arc<Session>, ProtoError> {
    let exporter = tunnel.exporter()?;
    let mut hs = ServerHandshake::new(exporter, random()?, Instant::now());
    let hello = expect_frame(ctrl).await?;
    let ServerEvent::Send(challenge) = hs.handle(hello, Instant::now())? else {
        return Err(ProtoError::UnexpectedFrame {
            expected: "Hello",
            got: "Proof",
        });
    };
    write_frame(ctrl, &challenge).await?;
    let proof = expect_frame(ctrl).await?;
    let ServerEvent::Verified(verified) = hs.handle(proof, Instant::now())? else {
        return Err(ProtoError::UnexpectedFrame {
            expected: "Proof",
            got: "Hello",
        });
    };
    let keys = state.registry.keys();
    if !keys.contains_key(&verified.key) {
        return Err(ProtoError::Rejected {
            code: RejectCode::UnknownKey,
            message: format!("key {} is not authorized on this gateway", verified.key),
        });
    }
    // Each hostname is granted or not on its own: one the key may not
    // serve must not lock the relay out with all its other routes. Only a
    // relay granted none of what it asked for is turned away.
    let mut granted = Vec::new();
    let mut denied = None;
    for pattern in &verified.hostnames {
        match keys.authorize(&verified.key, pattern) {
            Ok(()) => granted.push(pattern.clone()),
            Err(d) => {
                tracing::info!(%pattern, reason = %d.message, "hostname not granted");
                denied.get_or_insert(d);
            }
        }
    }
    if let (true, Some(d)) = (granted.is_empty(), denied) {
        return Err(ProtoError::Rejected {
            code: d.code,
            message: d.message,
        });
    }
    if state.registry.sessions_of(&verified.key) >= MAX_SESSIONS_PER_KEY {
        return Err(ProtoError::Rejected {
            code: RejectCode::TooManySessions,
            message: format!(
                "key {} already has {MAX_SESSIONS_PER_KEY} sessions on this gateway",
                verified.key
            ),
        });
    }
    if state.shutdown.is_cancelled() {
        return Err(ProtoError::Rejected {
            code: RejectCode::Draining,
            message: "gateway is shutting down".into(),
        });
    }
    let id = u64::from_be_bytes(random()?);
    let welcome = ServerHandshake::welcome(id, &granted, state.config.heartbeat(), state.config.peers.clone());
    write_frame(ctrl, &welcome).await?;
    Ok(Arc::new(Session::new(
        id,
        verified.key,
        verified.instance,
        tunnel.clone(),
        state.config.heartbeat(),
    )))
}

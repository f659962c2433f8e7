//! Ending a WebSocket cleanly. When ccedge cuts one (its user revoked, no frame for
//! `websocket_idle_timeout_ms`, the process stopping or draining past its limit), the client gets
//! a close frame and the upstream a masked one, each written where a frame ends: the frames of
//! both directions are followed as they pass, and once a close is asked, each direction passes
//! the rest of its current frame, then nothing.

use bytes::Bytes;
use pingora::proxy::UpgradedClose;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};

/// Why ccedge ended a session, as the access log says it.
const REASONS: [&str; 4] = [
    "",
    "the user was revoked by the admin listener: WebSocket closed (1008)",
    "WebSocket closed (1001): the process stopped, or kept it past server.websocket_drain_seconds",
    "WebSocket closed (1001): nothing came through for limits.websocket_idle_timeout_ms",
];

/// Close codes (RFC 6455, 7.4.1).
pub const GOING_AWAY: u16 = 1001;
pub const POLICY_VIOLATION: u16 = 1008;

/// The raw read and write timeouts of an upgraded connection, past its idle timeout: a backstop
/// that the idle close (with its close frames) comes before.
pub fn backstop(idle: Duration) -> Duration {
    idle + Duration::from_secs(30)
}

/// How long a direction may take to finish the frame it is in before the connection is cut
/// without a close frame in that direction.
const FRAME_END_WAIT: Duration = Duration::from_secs(2);

/// Where a stream of WebSocket frames stands: at a boundary between frames, or inside one.
#[derive(Debug, Default, Clone)]
pub struct Frames {
    /// The current frame's header bytes read so far (none at a boundary).
    header: [u8; 14],
    header_len: u8,
    /// Payload bytes of the current frame still to come.
    payload_left: u64,
}

impl Frames {
    pub fn at_boundary(&self) -> bool {
        self.header_len == 0 && self.payload_left == 0
    }

    /// Follows `bytes`.
    pub fn advance(&mut self, bytes: &[u8]) {
        self.consume(bytes, false);
    }

    /// How many bytes of `bytes` finish the current frame (0 at a boundary); `None` when it does
    /// not end within them (all are consumed).
    pub fn to_boundary(&mut self, bytes: &[u8]) -> Option<usize> {
        let used = self.consume(bytes, true);
        self.at_boundary().then_some(used)
    }

    /// Consumes `bytes`, or with `stop` only up to the first boundary; how many it consumed.
    fn consume(&mut self, bytes: &[u8], stop: bool) -> usize {
        let mut i = 0;
        while i < bytes.len() {
            if stop && self.at_boundary() {
                return i;
            }
            if self.payload_left > 0 {
                let take = self.payload_left.min((bytes.len() - i) as u64);
                self.payload_left -= take;
                i += take as usize;
                continue;
            }
            self.header[usize::from(self.header_len)] = bytes[i];
            self.header_len += 1;
            i += 1;
            if self.header_len >= 2 && self.header_len == header_size(&self.header) {
                self.payload_left = payload_len(&self.header);
                self.header_len = 0;
            }
        }
        i
    }
}

/// The size of a frame header, from its first two bytes.
fn header_size(header: &[u8; 14]) -> u8 {
    let extended = match header[1] & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let mask = if header[1] & 0x80 != 0 { 4 } else { 0 };
    2 + extended + mask
}

fn payload_len(header: &[u8; 14]) -> u64 {
    match header[1] & 0x7f {
        126 => u64::from(u16::from_be_bytes([header[2], header[3]])),
        127 => u64::from_be_bytes(header[2..10].try_into().expect("eight bytes")),
        short => u64::from(short),
    }
}

/// A close frame from the server (unmasked), with `code` and a short `reason`.
pub fn close_frame(code: u16, reason: &str) -> Bytes {
    let reason = &reason.as_bytes()[..reason.len().min(123)];
    let mut frame = Vec::with_capacity(4 + reason.len());
    frame.extend_from_slice(&[0x88, 2 + reason.len() as u8]);
    frame.extend_from_slice(&code.to_be_bytes());
    frame.extend_from_slice(reason);
    Bytes::from(frame)
}

/// A close frame as a client sends it (masked, RFC 6455 5.3), with `code`.
pub fn masked_close_frame(code: u16) -> Bytes {
    let mask: [u8; 4] = rand::random();
    let payload = code.to_be_bytes();
    let mut frame = vec![0x88, 0x80 | 2];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    Bytes::from(frame)
}

/// Milliseconds since the process's first WebSocket, for activity times kept in an atomic.
fn now_ms() -> u64 {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    let origin = *ORIGIN.get_or_init(Instant::now);
    u64::try_from(origin.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// What the filters of an upgraded session and its closing future share.
#[derive(Default)]
struct Shared {
    /// A close was asked: each direction stops at its next frame boundary.
    closing: AtomicBool,
    /// Why ccedge closed the session (an index into `REASONS`, 0: it did not).
    reason: AtomicU8,
    /// Each direction is at a frame boundary (and, once closing, passes nothing more).
    down_done: AtomicBool,
    up_done: AtomicBool,
    /// Told when a direction reaches its boundary after a close was asked.
    boundary: Notify,
    /// When bytes last came from the upstream and from the client (`now_ms`).
    upstream_active_ms: AtomicU64,
    client_active_ms: AtomicU64,
}

/// One upgraded session's frames in both directions, kept in the request's context.
pub struct WebSocket {
    shared: Arc<Shared>,
    /// Upstream to client.
    down: Frames,
    /// Client to upstream.
    up: Frames,
}

impl Default for WebSocket {
    fn default() -> Self {
        let shared = Shared {
            down_done: AtomicBool::new(true),
            up_done: AtomicBool::new(true),
            upstream_active_ms: AtomicU64::new(now_ms()),
            client_active_ms: AtomicU64::new(now_ms()),
            ..Shared::default()
        };
        WebSocket {
            shared: Arc::new(shared),
            down: Frames::default(),
            up: Frames::default(),
        }
    }
}

impl WebSocket {
    /// Upgraded bytes from the upstream, on their way to the client.
    pub fn from_upstream(&mut self, body: &mut Option<Bytes>) {
        let shared = &self.shared;
        pass(
            &mut self.down,
            shared,
            (&shared.down_done, &shared.upstream_active_ms),
            body,
        );
    }

    /// Upgraded bytes from the client, on their way to the upstream.
    pub fn from_client(&mut self, body: &mut Option<Bytes>) {
        let shared = &self.shared;
        pass(
            &mut self.up,
            shared,
            (&shared.up_done, &shared.client_active_ms),
            body,
        );
    }

    /// Why ccedge ended this session, for the access log; `None` when it did not.
    pub fn ended_by_proxy(&self) -> Option<&'static str> {
        match self.shared.reason.load(Ordering::Relaxed) {
            0 => None,
            why => REASONS.get(usize::from(why)).copied(),
        }
    }

    /// The future that ends this session: when `revoked` changes (1008), `closing` turns true
    /// (1001: a stop, or a drain past its limit), or nothing came from the client, or nothing
    /// from the upstream, for `idle` (1001).
    pub fn closer(
        &self,
        revoked: Option<watch::Receiver<()>>,
        mut closing: watch::Receiver<bool>,
        idle: Duration,
    ) -> Pin<Box<dyn Future<Output = UpgradedClose> + Send>> {
        let shared = self.shared.clone();
        Box::pin(async move {
            let revocation = async {
                if let Some(mut revoked) = revoked {
                    if revoked.changed().await.is_ok() {
                        return;
                    }
                }
                // No revocation to wait for (the user's state lives as long as this receiver).
                std::future::pending::<()>().await
            };
            let (code, reason, why) = tokio::select! {
                () = revocation => (POLICY_VIOLATION, "credentials revoked", 1),
                _ = closing.wait_for(|close| *close) => (GOING_AWAY, "server going away", 2),
                () = idle_for(&shared.client_active_ms, idle) => (GOING_AWAY, "idle", 3),
                () = idle_for(&shared.upstream_active_ms, idle) => (GOING_AWAY, "idle", 3),
            };
            shared.reason.store(why, Ordering::Relaxed);
            shared.closing.store(true, Ordering::Relaxed);
            let deadline = tokio::time::Instant::now() + FRAME_END_WAIT;
            while !(shared.down_done.load(Ordering::Relaxed)
                && shared.up_done.load(Ordering::Relaxed))
            {
                if tokio::time::timeout_at(deadline, shared.boundary.notified())
                    .await
                    .is_err()
                {
                    break;
                }
            }
            let done = |side: &AtomicBool| side.load(Ordering::Relaxed);
            UpgradedClose {
                downstream: done(&shared.down_done).then(|| close_frame(code, reason)),
                upstream: done(&shared.up_done).then(|| masked_close_frame(code)),
            }
        })
    }
}

/// Resolves once `active_ms` is `idle` old.
async fn idle_for(active_ms: &AtomicU64, idle: Duration) {
    let idle_ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
    loop {
        let last = active_ms.load(Ordering::Relaxed);
        let quiet = now_ms().saturating_sub(last);
        if quiet >= idle_ms {
            return;
        }
        tokio::time::sleep(Duration::from_millis(idle_ms - quiet)).await;
    }
}

/// One direction's bytes: followed frame by frame; once closing, passed up to the end of the
/// current frame, then dropped.
fn pass(
    frames: &mut Frames,
    shared: &Shared,
    (done, active_ms): (&AtomicBool, &AtomicU64),
    body: &mut Option<Bytes>,
) {
    let Some(bytes) = body.as_mut().filter(|b| !b.is_empty()) else {
        return;
    };
    if !shared.closing.load(Ordering::Relaxed) {
        active_ms.store(now_ms(), Ordering::Relaxed);
        frames.advance(bytes);
        done.store(frames.at_boundary(), Ordering::Relaxed);
        return;
    }
    if done.load(Ordering::Relaxed) {
        // An empty body, not `None`: `None` would end the stream.
        *bytes = Bytes::new();
        return;
    }
    if let Some(end) = frames.to_boundary(bytes) {
        bytes.truncate(end);
        done.store(true, Ordering::Relaxed);
        shared.boundary.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame as a server sends it: FIN and `opcode`, `payload` unmasked.
    fn frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![0x80 | opcode];
        match payload.len() {
            n if n < 126 => out.push(n as u8),
            n if n <= 0xffff => {
                out.push(126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(payload);
        out
    }

    /// As a client sends it: masked.
    fn masked(payload: &[u8]) -> Vec<u8> {
        let mask = [1, 2, 3, 4];
        let mut out = vec![0x81, 0x80 | payload.len() as u8];
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    #[test]
    fn boundaries_are_found_whatever_the_chunking() {
        let stream: Vec<u8> = [
            frame(1, b"hello"),
            frame(2, &vec![7; 300]),
            frame(2, &vec![9; 70_000]),
            frame(9, b""),
            masked(b"from a client"),
        ]
        .concat();
        let ends = {
            let mut ends = vec![7];
            ends.push(ends[0] + 4 + 300);
            ends.push(ends[1] + 10 + 70_000);
            ends.push(ends[2] + 2);
            ends.push(ends[3] + 6 + 13);
            ends
        };
        assert_eq!(*ends.last().unwrap(), stream.len());
        for chunk in [1, 2, 3, 5, 64, 4096, stream.len()] {
            let mut frames = Frames::default();
            let mut at = 0;
            let mut seen = Vec::new();
            for piece in stream.chunks(chunk) {
                for (i, b) in piece.iter().enumerate() {
                    frames.advance(std::slice::from_ref(b));
                    if frames.at_boundary() {
                        seen.push(at + i + 1);
                    }
                }
                at += piece.len();
            }
            assert_eq!(seen, ends, "chunks of {chunk}");
            // Whole chunks: at a boundary exactly where a chunk ends at one.
            let mut frames = Frames::default();
            let mut at = 0;
            for piece in stream.chunks(chunk) {
                frames.advance(piece);
                at += piece.len();
                assert_eq!(
                    frames.at_boundary(),
                    ends.contains(&at),
                    "chunks of {chunk} at {at}"
                );
            }
        }
    }

    #[test]
    fn a_close_finishes_the_frame_in_flight_and_drops_the_rest() {
        let first = frame(1, &[b'a'; 200]);
        let second = frame(1, b"next");
        let mut ws = WebSocket::default();
        // Half of the first frame has gone to the client.
        let mut body = Some(Bytes::from(first[..100].to_vec()));
        ws.from_upstream(&mut body);
        assert!(!ws.shared.down_done.load(Ordering::Relaxed));
        ws.shared.closing.store(true, Ordering::Relaxed);
        // The rest of it and the next frame arrive together: only the rest passes.
        let mut body = Some(Bytes::from([&first[100..], &second[..]].concat()));
        ws.from_upstream(&mut body);
        assert_eq!(body.as_deref(), Some(&first[100..]));
        assert!(ws.shared.down_done.load(Ordering::Relaxed));
        let mut later = Some(Bytes::from(second.clone()));
        ws.from_upstream(&mut later);
        assert_eq!(
            later,
            Some(Bytes::new()),
            "nothing after the boundary, and not the end"
        );
        // The client's direction was at a boundary all along.
        let mut body = Some(Bytes::from(masked(b"x")));
        ws.from_client(&mut body);
        assert_eq!(body, Some(Bytes::new()));
    }

    #[test]
    fn close_frames_parse_as_close_frames() {
        let down = close_frame(GOING_AWAY, "server going away");
        assert_eq!(&down[..4], &[0x88, 19, 0x03, 0xe9]);
        assert_eq!(&down[4..], b"server going away");
        let up = masked_close_frame(POLICY_VIOLATION);
        assert_eq!((up[0], up[1], up.len()), (0x88, 0x82, 8));
        let mask = &up[2..6];
        assert_eq!([up[6] ^ mask[0], up[7] ^ mask[1]], 1008u16.to_be_bytes());
        let mut frames = Frames::default();
        frames.advance(&up);
        assert!(frames.at_boundary());
    }

    #[tokio::test]
    async fn the_closer_waits_for_the_frame_in_flight() {
        let (_lifecycle, closing) = watch::channel(false);
        let mut ws = WebSocket::default();
        let (revoke, revoked) = watch::channel(());
        let closer = ws.closer(Some(revoked), closing, Duration::from_secs(3600));
        let first = frame(1, &[b'a'; 50]);
        let mut body = Some(Bytes::from(first[..10].to_vec()));
        ws.from_upstream(&mut body);
        let task = tokio::spawn(closer);
        revoke.send_replace(());
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!task.is_finished(), "closed in the middle of a frame");
        let mut body = Some(Bytes::from(first[10..].to_vec()));
        ws.from_upstream(&mut body);
        let close = task.await.unwrap();
        assert_eq!(close.downstream.unwrap()[2..4], 1008u16.to_be_bytes());
        assert!(ws.ended_by_proxy().unwrap().contains("revoked"));
        assert!(close.upstream.is_some());
    }

    #[tokio::test]
    async fn an_idle_session_is_closed_and_traffic_both_ways_keeps_it_open() {
        let (_lifecycle, closing) = watch::channel(false);
        let mut ws = WebSocket::default();
        let idle = Duration::from_millis(400);
        let closer = tokio::spawn(ws.closer(None, closing, idle));
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(250)).await;
            ws.from_client(&mut Some(Bytes::from(frame(9, b""))));
            ws.from_upstream(&mut Some(Bytes::from(frame(10, b""))));
        }
        assert!(
            !closer.is_finished(),
            "closed although frames passed 250 ms ago"
        );
        // The upstream goes on talking; the client falls silent.
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            ws.from_upstream(&mut Some(Bytes::from(frame(1, b"event"))));
        }
        let close = closer.await.unwrap();
        assert_eq!(close.downstream.unwrap()[2..4], 1001u16.to_be_bytes());
    }
}

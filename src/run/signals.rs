//! SIGUSR1 in a server process: reopen the access log (after logrotate moved it away). The
//! supervisor forwards its own SIGUSR1 to every server it runs, draining ones included.

use crate::observe::access_log::AccessLog;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::sync::Arc;
use tokio::signal::unix::{signal, SignalKind};

/// Takes SIGUSR1 from its default action (the process ends) for good, before the server starts:
/// the handler installed here stays for the life of the process, a daemonizing fork included,
/// and until `ReopenOnSignal` runs a SIGUSR1 only marks a signal nobody waits for.
pub fn hold_reopen_signal() -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| format!("cannot prepare for SIGUSR1: {e}"))?;
    runtime
        .block_on(async { signal(SignalKind::user_defined1()).map(drop) })
        .map_err(|e| format!("cannot handle SIGUSR1: {e}"))
}

/// Reopens the access log on each SIGUSR1, for as long as the process lives: a draining
/// process still writes lines, so it still follows a rotation.
pub struct ReopenOnSignal(pub Arc<AccessLog>);

#[async_trait]
impl BackgroundService for ReopenOnSignal {
    async fn start(&self, _shutdown: ShutdownWatch) {
        let mut reopen = match signal(SignalKind::user_defined1()) {
            Ok(reopen) => reopen,
            Err(e) => {
                log::error!("SIGUSR1 will not reopen the access log: {e}");
                return;
            }
        };
        while reopen.recv().await.is_some() {
            if !self.0.reopen() {
                log::info!("SIGUSR1: the access log is not a file, nothing to reopen");
            }
        }
    }
}

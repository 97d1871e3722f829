//! A TCP proxy between two processes or in-process nodes that a test can
//! cut and restore: the partitions of the Raft fault tests and of the
//! cluster jobs' tests.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A TCP proxy on loopback to one target, cut and restored on demand. While
/// cut it refuses new connections and closes the ones it carries.
pub struct Proxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    target: Arc<Mutex<Option<SocketAddr>>>,
    cut: watch::Sender<bool>,
}

impl Proxy {
    /// Listens on an ephemeral loopback port (on the current tokio
    /// runtime); connections wait for [`set_target`](Self::set_target).
    pub async fn start() -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port for the proxy");
        let addr = listener.local_addr().expect("the proxy's address");
        let target: Arc<Mutex<Option<SocketAddr>>> = Arc::new(Mutex::new(None));
        let (cut, _) = watch::channel(false);
        let t = target.clone();
        let cut_rx = cut.subscribe();
        tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    continue;
                };
                let mut cut_rx = cut_rx.clone();
                if *cut_rx.borrow() {
                    drop(inbound);
                    continue;
                }
                let Some(dst) = *t.lock().unwrap_or_else(PoisonError::into_inner) else {
                    continue;
                };
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(dst).await else {
                        return;
                    };
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    let (mut a, mut b) = (inbound, outbound);
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut a, &mut b) => {}
                        _ = cut_rx.wait_for(|c| *c) => {}
                    }
                });
            }
        });
        Proxy { addr, target, cut }
    }

    /// Forwards new connections to `to`.
    pub fn set_target(&self, to: SocketAddr) {
        *self.target.lock().unwrap_or_else(PoisonError::into_inner) = Some(to);
    }

    /// Cuts (closing every carried connection) or restores the link.
    pub fn set_cut(&self, cut: bool) {
        self.cut.send_replace(cut);
    }
}

//! A TCP forwarder a test can close and open: a network cut between one
//! client and a server, while other clients reach the server directly.

use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

pub struct Gate {
    /// Where clients connect.
    pub port: u16,
    open: Arc<AtomicBool>,
    links: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Gate {
    /// Forwards `127.0.0.1:{port}` to `127.0.0.1:{target}`, open.
    pub async fn start(target: u16) -> Gate {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind gate");
        let port = listener.local_addr().expect("gate addr").port();
        let open = Arc::new(AtomicBool::new(true));
        let links: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (is_open, all) = (open.clone(), links.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                // Closed: the connection is dropped at once, as by a cut.
                if !is_open.load(SeqCst) {
                    continue;
                }
                let link = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(("127.0.0.1", target)).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                if let Ok(mut v) = all.lock() {
                    v.retain(|h| !h.is_finished());
                    v.push(link);
                }
            }
        });
        Gate {
            port,
            open,
            links,
            accept,
        }
    }

    /// Cuts every connection through the gate and refuses new ones.
    pub fn close(&self) {
        self.open.store(false, SeqCst);
        if let Ok(mut v) = self.links.lock() {
            v.drain(..).for_each(|h| h.abort());
        }
    }

    pub fn open(&self) {
        self.open.store(true, SeqCst);
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.close();
        self.accept.abort();
    }
}

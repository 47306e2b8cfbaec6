//! A TCP proxy a test can cut and restore: the database going away and coming back, as a
//! network partition or a restarting server looks to a service.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

pub struct Proxy {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    accept: JoinHandle<()>,
}

struct State {
    up: bool,
    pipes: Vec<JoinHandle<()>>,
}

impl Proxy {
    /// A proxy to `target`, up or down from the start.
    pub async fn start(target: SocketAddr, up: bool) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a free port");
        let addr = listener.local_addr().expect("bound");
        let state = Arc::new(Mutex::new(State { up, pipes: Vec::new() }));
        let shared = state.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let mut s = shared.lock().unwrap();
                if !s.up {
                    // Down: connections are refused as soon as they arrive.
                    drop(client);
                    continue;
                }
                s.pipes.push(tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(target).await {
                        let mut client = client;
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                }));
            }
        });
        Proxy { addr, state, accept }
    }

    /// Cuts every connection and refuses new ones.
    pub fn down(&self) {
        let mut s = self.state.lock().unwrap();
        s.up = false;
        for p in s.pipes.drain(..) {
            p.abort();
        }
    }

    pub fn up(&self) {
        self.state.lock().unwrap().up = true;
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.down();
        self.accept.abort();
    }
}

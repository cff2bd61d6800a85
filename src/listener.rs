//! Accepting connections for the gRPC server: plaintext h2c, or TLS (and
//! mTLS) terminated here with rustls so that certificates are reloaded when
//! their files change, and a hard end to connections that outlive
//! `AGENDA_MAX_CONNECTION_AGE` plus its grace (tonic sends the GOAWAY at the
//! age; its own grace option would skip the GOAWAY, so the grace is here).

use std::{
    io,
    net::SocketAddr,
    path::Path,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::{Duration, SystemTime},
};

use rustls::{
    RootCertStore, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::WebPkiClientVerifier,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::mpsc,
    time::Sleep,
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::config::TlsFiles;

/// How long a client may take for the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What identifies a version of the TLS files: modification time and length of each.
type Stamp = Vec<Option<(SystemTime, u64)>>;

/// The TLS configuration, rebuilt when one of its files changes.
pub struct TlsReloader {
    files: TlsFiles,
    loaded: Mutex<(Stamp, Arc<ServerConfig>)>,
}

impl TlsReloader {
    /// Loads the files; an error names the file that is wrong.
    pub fn new(files: TlsFiles) -> Result<TlsReloader, String> {
        let stamp = stamp(&files);
        let config = load(&files)?;
        Ok(TlsReloader { files, loaded: Mutex::new((stamp, config)) })
    }

    /// The configuration for a new connection, reloaded first if a file changed.
    /// A file that does not load keeps the previous configuration in use.
    pub fn config(&self) -> Arc<ServerConfig> {
        let now = stamp(&self.files);
        let mut loaded = match self.loaded.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if now != loaded.0 {
            loaded.0 = now;
            match load(&self.files) {
                Ok(config) => {
                    tracing::info!("TLS certificate files changed: reloaded");
                    loaded.1 = config;
                }
                Err(error) => {
                    tracing::error!(%error, "TLS certificate files changed but do not load; keeping the previous ones")
                }
            }
        }
        loaded.1.clone()
    }
}

fn stamp(files: &TlsFiles) -> Stamp {
    [Some(&files.cert), Some(&files.key), files.client_ca.as_ref()]
        .into_iter()
        .flatten()
        .map(|path| std::fs::metadata(path).ok().and_then(|m| Some((m.modified().ok()?, m.len()))))
        .collect()
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate in it", path.display()));
    }
    Ok(certs)
}

fn load(files: &TlsFiles) -> Result<Arc<ServerConfig>, String> {
    let certs = certificates(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| format!("{}: {e}", files.key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS set-up: {e}"))?;
    let builder = match &files.client_ca {
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for cert in certificates(path)? {
                roots.add(cert).map_err(|e| format!("{}: {e}", path.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| format!("{}: {e}", path.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| format!("{} and {}: {e}", files.cert.display(), files.key.display()))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Accepts connections on `listener` until the returned stream is dropped:
/// TLS handshakes (when `tls` is set) run on their own tasks so that a slow
/// client holds up nobody; every connection is closed `lifetime` after it
/// was accepted, when set.
pub fn incoming(
    listener: TcpListener,
    tls: Option<Arc<TlsReloader>>,
    lifetime: Option<Duration>,
) -> ReceiverStream<io::Result<ServerConn>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(accept_loop(listener, tls, lifetime, tx));
    ReceiverStream::new(rx)
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<Arc<TlsReloader>>,
    lifetime: Option<Duration>,
    tx: mpsc::Sender<io::Result<ServerConn>>,
) {
    loop {
        // The server dropping the stream closes the listener at once.
        let accepted = tokio::select! {
            () = tx.closed() => return,
            accepted = listener.accept() => accepted,
        };
        let (tcp, remote) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors and the like: wait instead of spinning.
                tracing::warn!(%error, "cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let local = tcp.local_addr().ok();
        match &tls {
            None => {
                let conn = ServerConn::new(Io::Plain(tcp), local, remote, lifetime);
                if tx.send(Ok(conn)).await.is_err() {
                    return;
                }
            }
            Some(tls) => {
                let acceptor = TlsAcceptor::from(tls.config());
                let tx = tx.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let conn = ServerConn::new(Io::Tls(Box::new(stream)), local, remote, lifetime);
                            let _ = tx.send(Ok(conn)).await;
                        }
                        Ok(Err(error)) => tracing::debug!(%error, %remote, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%remote, "TLS handshake timed out"),
                    }
                });
            }
        }
    }
}

enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// An accepted connection, plaintext or TLS, closed at the end of its lifetime.
pub struct ServerConn {
    io: Io,
    local: Option<SocketAddr>,
    remote: SocketAddr,
    closes_at: Option<Pin<Box<Sleep>>>,
}

impl ServerConn {
    fn new(io: Io, local: Option<SocketAddr>, remote: SocketAddr, lifetime: Option<Duration>) -> Self {
        ServerConn { io, local, remote, closes_at: lifetime.map(|l| Box::pin(tokio::time::sleep(l))) }
    }

    /// Fails once the lifetime is over, which makes hyper close the connection.
    fn check_age(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if let Some(sleep) = &mut self.closes_at
            && sleep.as_mut().poll(cx).is_ready()
        {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "the connection outlived its maximum age and grace"));
        }
        Ok(())
    }
}

impl Connected for ServerConn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        TcpConnectInfo { local_addr: self.local, remote_addr: Some(self.remote) }
    }
}

impl AsyncRead for ServerConn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        self.check_age(cx)?;
        match &mut self.io {
            Io::Plain(io) => Pin::new(io).poll_read(cx, buf),
            Io::Tls(io) => Pin::new(io.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ServerConn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.check_age(cx)?;
        match &mut self.io {
            Io::Plain(io) => Pin::new(io).poll_write(cx, buf),
            Io::Tls(io) => Pin::new(io.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.check_age(cx)?;
        match &mut self.io {
            Io::Plain(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            Io::Tls(io) => Pin::new(io.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(io) => io.is_write_vectored(),
            Io::Tls(io) => io.is_write_vectored(),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            Io::Plain(io) => Pin::new(io).poll_flush(cx),
            Io::Tls(io) => Pin::new(io.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            Io::Plain(io) => Pin::new(io).poll_shutdown(cx),
            Io::Tls(io) => Pin::new(io.as_mut()).poll_shutdown(cx),
        }
    }
}

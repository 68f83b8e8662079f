//! rustls configuration for TLS termination (listeners) and origination (upstreams), with the
//! ring provider and PEM files read through `rustls-pki-types`.

use std::{path::Path, sync::Arc};

use rafael_config::{ListenerProtocol, ServerTls, UpstreamProtocol, UpstreamTls};
use rustls::{ClientConfig, RootCertStore, ServerConfig, crypto::CryptoProvider};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

/// The one crypto provider rafael uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A server config for a listener: the PEM chain and key, ALPN per the listener's protocol.
pub fn server_config(
    tls: &ServerTls,
    protocol: ListenerProtocol,
) -> Result<Arc<ServerConfig>, String> {
    let certs = read_certs(&tls.cert)?;
    let key = PrivateKeyDer::from_pem_file(&tls.key)
        .map_err(|e| format!("cannot read a private key from {}: {e}", tls.key.display()))?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("certificate and key do not form a usable pair: {e}"))?;
    config.alpn_protocols = match protocol {
        ListenerProtocol::Auto => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        ListenerProtocol::Http1 => vec![b"http/1.1".to_vec()],
        ListenerProtocol::Http2 => vec![b"h2".to_vec()],
    };
    Ok(Arc::new(config))
}

/// A client config for an upstream: trust `ca` (or the Mozilla roots), ALPN per protocol.
pub fn client_config(
    tls: &UpstreamTls,
    protocol: UpstreamProtocol,
) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    match &tls.ca {
        Some(ca) => {
            for cert in read_certs(ca)? {
                roots.add(cert).map_err(|e| {
                    format!("{} holds an unusable CA certificate: {e}", ca.display())
                })?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = match protocol {
        UpstreamProtocol::Http1 => vec![b"http/1.1".to_vec()],
        UpstreamProtocol::Http2 => vec![b"h2".to_vec()],
    };
    Ok(Arc::new(config))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read certificates from {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

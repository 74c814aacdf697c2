//! TLS identities, certificate pinning and QUIC endpoint configuration.
//!
//! There is no certificate authority: each vice server has a self-signed certificate, and the cell
//! file pins its blake3 fingerprint (like SSH known hosts). Clients may present a certificate of
//! their own; the server accepts any, proves the peer holds its key (TLS does), and maps the
//! fingerprint to an identity (today: the cell's admin credential).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DistinguishedName, SignatureScheme};

use crate::error::ProtoError;

/// ALPN protocol id: also keeps other QUIC clients from talking to vice by accident.
pub const ALPN: &[u8] = b"afs1";
/// The name clients put in SNI; identity is proven by the pinned fingerprint, not the name.
pub const SERVER_NAME: &str = "vice";

/// A certificate and its private key.
pub struct Identity {
    pub cert: CertificateDer<'static>,
    pub key: PrivateKeyDer<'static>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity { cert: self.cert.clone(), key: self.key.clone_key() }
    }
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Identity({})", self.fingerprint())
    }
}

impl Identity {
    /// A fresh key pair with a self-signed certificate naming `subject`.
    pub fn generate(subject: &str) -> Result<Self, ProtoError> {
        let ck = rcgen::generate_simple_self_signed(vec![subject.to_string()])
            .map_err(|e| ProtoError::Tls(format!("generating a certificate: {e}")))?;
        let key = PrivateKeyDer::try_from(ck.signing_key.serialize_der())
            .map_err(|e| ProtoError::Tls(format!("encoding the private key: {e}")))?;
        Ok(Identity { cert: ck.cert.der().clone(), key })
    }

    /// Certificate and key in one PEM document.
    pub fn to_pem(&self) -> String {
        let cert = pem_block("CERTIFICATE", &self.cert);
        let key = pem_block("PRIVATE KEY", self.key.secret_der());
        format!("{cert}{key}")
    }

    pub fn from_pem(pem: &[u8], what: &str) -> Result<Self, ProtoError> {
        let bad = |reason: String| ProtoError::Credential { path: what.to_string(), reason };
        let cert = CertificateDer::from_pem_slice(pem).map_err(|e| bad(format!("no certificate: {e}")))?;
        let key = PrivateKeyDer::from_pem_slice(pem).map_err(|e| bad(format!("no private key: {e}")))?;
        Ok(Identity { cert, key })
    }

    pub fn load(path: &std::path::Path) -> Result<Self, ProtoError> {
        let pem = std::fs::read(path)
            .map_err(|e| ProtoError::Credential { path: path.display().to_string(), reason: e.to_string() })?;
        Self::from_pem(&pem, &path.display().to_string())
    }

    pub fn fingerprint(&self) -> String {
        fingerprint(&self.cert)
    }
}

fn pem_block(label: &str, der: &[u8]) -> String {
    use std::fmt::Write;
    let b64 = base64_encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        // Base64 output is ASCII.
        let _ = writeln!(out, "{}", String::from_utf8_lossy(line));
    }
    let _ = writeln!(out, "-----END {label}-----");
    out
}

fn base64_encode(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        out.push(T[(n >> 18) as usize & 63] as char);
        out.push(T[(n >> 12) as usize & 63] as char);
        out.push(if c.len() > 1 { T[(n >> 6) as usize & 63] as char } else { '=' });
        out.push(if c.len() > 2 { T[n as usize & 63] as char } else { '=' });
    }
    out
}

/// `b3:` followed by the blake3 hash of the DER certificate, in hex.
pub fn fingerprint(cert: &[u8]) -> String {
    format!("b3:{}", blake3::hash(cert).to_hex())
}

/// The fingerprint of the certificate the peer presented on this connection, if any.
pub fn peer_fingerprint(conn: &quinn::Connection) -> Option<String> {
    let any = conn.peer_identity()?;
    let certs = any.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    certs.first().map(|c| fingerprint(c))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Accepts exactly one server certificate: the one whose fingerprint the cell file pins.
#[derive(Debug)]
struct PinnedServer {
    expected: String,
    provider: Arc<CryptoProvider>,
    /// What the server actually presented when it did not match, for a clear error.
    mismatch: Arc<Mutex<Option<String>>>,
}

impl ServerCertVerifier for PinnedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got = fingerprint(end_entity);
        if got == self.expected {
            Ok(ServerCertVerified::assertion())
        } else {
            if let Ok(mut m) = self.mismatch.lock() {
                *m = Some(got.clone());
            }
            Err(rustls::Error::General(format!("certificate fingerprint {got} is not the pinned {}", self.expected)))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// Lets any client present a certificate (or none); TLS proves it holds the key, and the server
/// decides what the fingerprint may do.
#[derive(Debug)]
struct AnyClientCert {
    provider: Arc<CryptoProvider>,
}

impl ClientCertVerifier for AnyClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// Where the pinned verifier leaves the fingerprint a server presented when it did not match.
pub type MismatchSlot = Arc<Mutex<Option<String>>>;

/// Transport limits and tuning shared by both ends.
#[derive(Debug, Clone)]
pub struct TransportTuning {
    pub idle_timeout: Duration,
    pub keep_alive: Duration,
    /// Streams the peer may open at once (server side: RPCs in flight per client).
    pub max_streams: u32,
}

impl Default for TransportTuning {
    fn default() -> Self {
        TransportTuning { idle_timeout: Duration::from_secs(30), keep_alive: Duration::from_secs(10), max_streams: 64 }
    }
}

fn transport(t: &TransportTuning) -> Result<Arc<quinn::TransportConfig>, ProtoError> {
    let mut tc = quinn::TransportConfig::default();
    let idle = quinn::IdleTimeout::try_from(t.idle_timeout).map_err(|e| ProtoError::Tls(e.to_string()))?;
    tc.max_idle_timeout(Some(idle));
    tc.keep_alive_interval(Some(t.keep_alive));
    tc.max_concurrent_bidi_streams(t.max_streams.into());
    tc.max_concurrent_uni_streams(0u32.into());
    // Windows sized for a fast LAN or loopback: a 1 MiB chunk fits in one stream window
    // several times over, and a handful of streams can be in flight at once.
    tc.stream_receive_window((8u32 * 1024 * 1024).into());
    tc.receive_window((32u32 * 1024 * 1024).into());
    tc.send_window(32 * 1024 * 1024);
    // Let path-MTU discovery grow packets well past 1500 bytes where the path allows (loopback
    // does): per-packet cost is what bounds QUIC throughput.
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(16_384);
    tc.mtu_discovery_config(Some(mtu));
    Ok(Arc::new(tc))
}

/// The server endpoint's configuration. Its stateless-reset key is derived from the server's
/// private key, so a restarted server resets its old connections at once (clients notice in one
/// round trip instead of waiting for an idle timeout).
pub fn endpoint_config(identity: &Identity) -> quinn::EndpointConfig {
    let seed = blake3::derive_key("afs vice QUIC stateless reset key v1", identity.key.secret_der());
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &seed);
    let mut config = quinn::EndpointConfig::new(Arc::new(key));
    // Connection ids carry a keyed check; the same key after a restart lets the new process
    // recognise its predecessor's ids and answer them with a reset instead of silence.
    let cid_seed = blake3::derive_key("afs vice QUIC connection id key v1", identity.key.secret_der());
    let mut cid_key = [0u8; 8];
    cid_key.copy_from_slice(&cid_seed[..8]);
    let cid_key = u64::from_le_bytes(cid_key);
    config.cid_generator(move || Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key)));
    config
}

pub fn server_config(identity: &Identity, tuning: &TransportTuning) -> Result<quinn::ServerConfig, ProtoError> {
    let provider = provider();
    let verifier = Arc::new(AnyClientCert { provider: provider.clone() });
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| ProtoError::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![identity.cert.clone()], identity.key.clone_key())
        .map_err(|e| ProtoError::Tls(e.to_string()))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).map_err(|e| ProtoError::Tls(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(transport(tuning)?);
    Ok(config)
}

/// A client configuration that accepts only the server whose fingerprint is `expected`.
/// The returned slot holds the fingerprint actually seen if it did not match.
pub fn client_config(
    expected: &str,
    identity: Option<&Identity>,
    tuning: &TransportTuning,
) -> Result<(quinn::ClientConfig, MismatchSlot), ProtoError> {
    let provider = provider();
    let mismatch = Arc::new(Mutex::new(None));
    let verifier = Arc::new(PinnedServer {
        expected: expected.to_string(),
        provider: provider.clone(),
        mismatch: mismatch.clone(),
    });
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| ProtoError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut tls = match identity {
        Some(id) => builder
            .with_client_auth_cert(vec![id.cert.clone()], id.key.clone_key())
            .map_err(|e| ProtoError::Tls(e.to_string()))?,
        None => builder.with_no_client_auth(),
    };
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| ProtoError::Tls(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(transport(tuning)?);
    Ok((config, mismatch))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_pem_round_trip() {
        let id = Identity::generate("vice").unwrap();
        let back = Identity::from_pem(id.to_pem().as_bytes(), "test").unwrap();
        assert_eq!(back.fingerprint(), id.fingerprint());
        assert_eq!(back.key.secret_der(), id.key.secret_der());
        assert!(id.fingerprint().starts_with("b3:"));
    }

    #[test]
    fn garbage_credential_is_a_clear_error() {
        let err = Identity::from_pem(b"not pem", "admin.cred").unwrap_err();
        assert!(err.to_string().contains("admin.cred"), "{err}");
    }

    #[test]
    fn base64_matches_known_vectors() {
        assert_eq!(base64_encode(b""), "");
        assert_eq!(base64_encode(b"f"), "Zg==");
        assert_eq!(base64_encode(b"fo"), "Zm8=");
        assert_eq!(base64_encode(b"foo"), "Zm9v");
        assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
    }
}

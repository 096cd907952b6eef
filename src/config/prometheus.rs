//! A Prometheus remote-write destination's validated settings (`[[destination]]` with
//! `protocol = "prometheus_remote_write"`; keys in `config/aggd.toml`, behaviour in
//! `docs/remote-write.md`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::error::{SectionError, invalid};
use super::file::DestinationFile;
use crate::rules::mapping::NameMapping;

/// Default most samples per request (Prometheus's `max_samples_per_send` is 2000).
pub const DEFAULT_BATCH_DATAPOINTS: usize = 2000;
/// Default most requests in flight per destination (Prometheus's queue manager shards
/// the same way, each series always in one shard).
pub const DEFAULT_MAX_IN_FLIGHT: usize = 4;
/// Most requests in flight `max_in_flight` may ask for.
pub const MAX_MAX_IN_FLIGHT: usize = 64;
/// Default longest wait for one request (Prometheus's `remote_timeout`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// How requests authenticate.
#[derive(Clone, PartialEq, Eq)]
pub enum HttpAuth {
    /// No `Authorization` header.
    None,
    /// HTTP basic auth.
    Basic {
        /// User name.
        username: String,
        /// Password.
        password: String,
    },
    /// `Authorization: Bearer <token>`.
    Bearer(String),
}

impl std::fmt::Debug for HttpAuth {
    /// Never prints a secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HttpAuth::None => f.write_str("none"),
            HttpAuth::Basic { username, .. } => write!(f, "basic auth as {username:?}"),
            HttpAuth::Bearer(_) => f.write_str("bearer token"),
        }
    }
}

/// A remote-write destination. Its `Debug` form leaves out secrets: the auth is named
/// only, the client key and header values are not printed.
#[derive(Clone, PartialEq)]
pub struct RemoteWriteConfig {
    /// The URL requests are POSTed to, e.g. `http://127.0.0.1:8428/api/v1/write`.
    pub url: String,
    /// Authentication.
    pub auth: HttpAuth,
    /// PEM CA certificates to trust besides the system's (read at load).
    pub tls_ca: Option<Vec<u8>>,
    /// PEM client certificate and key, concatenated (read at load).
    pub tls_identity: Option<Vec<u8>>,
    /// More request headers (validated names and values).
    pub headers: Vec<(String, String)>,
    /// Most samples per request (≥ 1).
    pub batch_datapoints: usize,
    /// Most requests awaiting an answer at once, 1 to [`MAX_MAX_IN_FLIGHT`]: series are
    /// spread over that many lanes by name, each lane with one request in flight, so a
    /// series' samples arrive in order.
    pub max_in_flight: usize,
    /// Longest wait for one request's answer; a timeout is retried like a network error.
    pub timeout: Duration,
    /// The name mapping file's rules, if one is given.
    pub mapping: Option<Arc<NameMapping>>,
}

impl std::fmt::Debug for RemoteWriteConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let headers: Vec<&str> = self.headers.iter().map(|h| h.0.as_str()).collect();
        f.debug_struct("RemoteWriteConfig")
            .field("url", &self.url)
            .field("auth", &self.auth)
            .field("tls_ca", &self.tls_ca.is_some())
            .field("tls_identity", &self.tls_identity.is_some())
            .field("headers", &headers)
            .field("batch_datapoints", &self.batch_datapoints)
            .field("max_in_flight", &self.max_in_flight)
            .field("timeout", &self.timeout)
            .field("mapping", &self.mapping.is_some())
            .finish()
    }
}

/// Headers aggd sets itself, which `headers` may not replace.
const RESERVED: [&str; 5] = [
    "authorization",
    "content-encoding",
    "content-type",
    "content-length",
    "x-prometheus-remote-write-version",
];

fn read(file: &PathBuf) -> Result<Vec<u8>, SectionError> {
    std::fs::read(file).map_err(|error| SectionError::Io {
        file: file.clone(),
        error,
    })
}

fn secret(file: &PathBuf) -> Result<String, SectionError> {
    Ok(String::from_utf8_lossy(&read(file)?).trim().to_string())
}

/// The host and port requests go to (for the ring), from an `http(s)://` URL; the error
/// says what is wrong.
pub fn url_host_port(url: &str) -> Result<(String, u16), String> {
    let u = reqwest::Url::parse(url).map_err(|e| format!("url {url:?}: {e}"))?;
    if !matches!(u.scheme(), "http" | "https") {
        return Err(format!("url {url:?} is not http:// or https://"));
    }
    let host = u
        .host_str()
        .ok_or_else(|| format!("url {url:?} has no host"))?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = u
        .port_or_known_default()
        .ok_or_else(|| format!("url {url:?} has no port"))?;
    Ok((host, port))
}

impl RemoteWriteConfig {
    /// Validates the remote-write keys of `d`. Errors: no `url`, a URL that is not
    /// http(s), `address` given too, both basic auth and a bearer token, a password
    /// without a user (or the reverse), TLS files on an `http://` URL, a client
    /// certificate without its key, an unreadable file, a header aggd sets itself or one
    /// that is not a valid HTTP header, PEM that does not parse, a zero batch size or
    /// timeout, an invalid mapping file.
    pub fn from_file(d: &DestinationFile) -> Result<RemoteWriteConfig, SectionError> {
        let url = d.url.clone().ok_or_else(|| {
            invalid("destination: protocol prometheus_remote_write needs url = \"http://…\"")
        })?;
        let what = format!("destination {url}");
        if !d.address.is_empty() {
            return Err(invalid(format!(
                "{what}: give url, not address, for prometheus_remote_write"
            )));
        }
        url_host_port(&url).map_err(|e| invalid(format!("destination: {e}")))?;
        let auth = auth(d, &what)?;
        let (tls_ca, tls_identity) = tls(d, &url, &what)?;
        let headers = headers(d, &what)?;
        let batch_datapoints = d.batch_datapoints.unwrap_or(DEFAULT_BATCH_DATAPOINTS);
        let timeout = d.timeout.unwrap_or(DEFAULT_TIMEOUT);
        if batch_datapoints == 0 || timeout.is_zero() {
            return Err(invalid(format!(
                "{what}: batch_datapoints and timeout must be above 0"
            )));
        }
        let max_in_flight = d.max_in_flight.unwrap_or(DEFAULT_MAX_IN_FLIGHT);
        if !(1..=MAX_MAX_IN_FLIGHT).contains(&max_in_flight) {
            return Err(invalid(format!(
                "{what}: max_in_flight must be 1 to {MAX_MAX_IN_FLIGHT}"
            )));
        }
        let mapping = d
            .mapping_file
            .as_ref()
            .map(|f| NameMapping::load(f).map(Arc::new))
            .transpose()?;
        Ok(RemoteWriteConfig {
            url,
            auth,
            tls_ca,
            tls_identity,
            headers,
            batch_datapoints,
            max_in_flight,
            timeout,
            mapping,
        })
    }
}

/// One secret given inline or in a file (`key` or `key_file`), not both.
fn inline_or_file(
    inline: &Option<String>,
    file: &Option<PathBuf>,
    key: &str,
    what: &str,
) -> Result<Option<String>, SectionError> {
    match (inline, file) {
        (Some(_), Some(_)) => Err(invalid(format!(
            "{what}: give {key} or {key}_file, not both"
        ))),
        (Some(p), None) => Ok(Some(p.clone())),
        (None, Some(f)) => Ok(Some(secret(f)?)),
        (None, None) => Ok(None),
    }
}

/// The destination's authentication: basic auth, a bearer token, or none.
fn auth(d: &DestinationFile, what: &str) -> Result<HttpAuth, SectionError> {
    let password = inline_or_file(
        &d.basic_auth_password,
        &d.basic_auth_password_file,
        "basic_auth_password",
        what,
    )?;
    let token = inline_or_file(&d.bearer_token, &d.bearer_token_file, "bearer_token", what)?;
    match (d.basic_auth_username.clone(), password, token) {
        (Some(_), _, Some(_)) | (None, Some(_), Some(_)) => Err(invalid(format!(
            "{what}: give basic auth or a bearer token, not both"
        ))),
        (Some(username), Some(password), None) => Ok(HttpAuth::Basic { username, password }),
        (Some(_), None, None) | (None, Some(_), None) => Err(invalid(format!(
            "{what}: basic auth needs basic_auth_username and a password"
        ))),
        (None, None, Some(t)) => Ok(HttpAuth::Bearer(t)),
        (None, None, None) => Ok(HttpAuth::None),
    }
}

/// The PEM CA certificates and client identity (certificate and key), read and parsed.
#[allow(clippy::type_complexity)]
fn tls(
    d: &DestinationFile,
    url: &str,
    what: &str,
) -> Result<(Option<Vec<u8>>, Option<Vec<u8>>), SectionError> {
    let tls_given = d.tls_ca.is_some() || d.tls_cert.is_some() || d.tls_key.is_some();
    if tls_given && !url.starts_with("https://") {
        return Err(invalid(format!(
            "{what}: tls_ca, tls_cert and tls_key need an https:// url"
        )));
    }
    let tls_identity = match (&d.tls_cert, &d.tls_key) {
        (Some(c), Some(k)) => {
            let mut pem = read(c)?;
            pem.push(b'\n');
            pem.extend(read(k)?);
            Some(pem)
        }
        (None, None) => None,
        _ => return Err(invalid(format!("{what}: tls_cert and tls_key go together"))),
    };
    let tls_ca = d.tls_ca.as_ref().map(read).transpose()?;
    if let Some(pem) = &tls_ca {
        let certs = reqwest::Certificate::from_pem_bundle(pem)
            .map_err(|e| invalid(format!("{what}: tls_ca: {e}")))?;
        if certs.is_empty() {
            return Err(invalid(format!("{what}: tls_ca holds no PEM certificate")));
        }
    }
    if let Some(pem) = &tls_identity {
        reqwest::Identity::from_pem(pem)
            .map_err(|e| invalid(format!("{what}: tls_cert/tls_key: {e}")))?;
    }
    Ok((tls_ca, tls_identity))
}

/// The extra request headers, each a valid HTTP header aggd does not set itself.
fn headers(d: &DestinationFile, what: &str) -> Result<Vec<(String, String)>, SectionError> {
    let mut headers = Vec::new();
    for (k, v) in &d.headers {
        if RESERVED.contains(&k.to_ascii_lowercase().as_str()) {
            return Err(invalid(format!(
                "{what}: header {k:?} is set by aggd (use the auth keys for Authorization)"
            )));
        }
        let valid = reqwest::header::HeaderName::from_bytes(k.as_bytes()).is_ok()
            && reqwest::header::HeaderValue::from_str(v).is_ok();
        if !valid {
            return Err(invalid(format!(
                "{what}: header {k:?}: {v:?} is not valid HTTP"
            )));
        }
        headers.push((k.clone(), v.clone()));
    }
    Ok(headers)
}

/// Refuses remote-write keys on a carbon destination (`address` names it).
pub fn refuse_on_carbon(d: &DestinationFile) -> Result<(), SectionError> {
    let given = [
        ("url", d.url.is_some()),
        ("basic_auth_username", d.basic_auth_username.is_some()),
        ("basic_auth_password", d.basic_auth_password.is_some()),
        (
            "basic_auth_password_file",
            d.basic_auth_password_file.is_some(),
        ),
        ("bearer_token", d.bearer_token.is_some()),
        ("bearer_token_file", d.bearer_token_file.is_some()),
        ("tls_ca", d.tls_ca.is_some()),
        ("tls_cert", d.tls_cert.is_some()),
        ("tls_key", d.tls_key.is_some()),
        ("headers", !d.headers.is_empty()),
        ("batch_datapoints", d.batch_datapoints.is_some()),
        ("max_in_flight", d.max_in_flight.is_some()),
        ("timeout", d.timeout.is_some()),
        ("mapping_file", d.mapping_file.is_some()),
    ];
    match given.iter().find(|g| g.1) {
        Some((key, _)) => Err(invalid(format!(
            "destination {}: {key} is for protocol = \"prometheus_remote_write\" only",
            d.address
        ))),
        None => Ok(()),
    }
}

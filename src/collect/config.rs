//! The `[collect]` section of the pipeline file (README "Collector"). Absent: the collector is
//! not configured (`touchstream collect` refuses to start, `run` does not start it).

use std::net::SocketAddr;

use serde::Deserialize;

/// One token key. The first key of `[collect] keys` signs new tokens; every key verifies, so a
/// rotation adds the new key in front and removes the old one once its tokens no longer matter.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KeySpec {
    /// Short id carried in each token (`[A-Za-z0-9_-]{1,16}`), so verification finds the key.
    pub id: String,
    /// The secret itself (at least 32 bytes)...
    #[serde(default)]
    pub secret: Option<String>,
    /// ...or the name of an environment variable that holds it (preferred in production).
    #[serde(default)]
    pub secret_env: Option<String>,
}

impl KeySpec {
    /// The key bytes: `secret`, or the value of `secret_env`.
    pub fn secret_bytes(&self) -> Result<Vec<u8>, String> {
        match (&self.secret, &self.secret_env) {
            (Some(s), None) => Ok(s.as_bytes().to_vec()),
            (None, Some(var)) => std::env::var(var)
                .map(String::into_bytes)
                .map_err(|_| format!("key `{}`: environment variable {var} is not set", self.id)),
            _ => Err(format!(
                "key `{}`: give exactly one of `secret` and `secret_env`",
                self.id
            )),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CollectConfig {
    /// Where the collector listens.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Public base URL of the collector, used in minted pixel and link URLs.
    #[serde(default = "default_public_url")]
    pub public_url: String,
    /// Token keys, newest first (see `KeySpec`).
    #[serde(default)]
    pub keys: Vec<KeySpec>,
    /// Domains a tracked link may redirect to (a listed domain and its subdomains); anything
    /// else is refused, so the collector is no open redirect.
    #[serde(default)]
    pub allowed_redirect_domains: Vec<String>,
    /// Peers (IP addresses or CIDR ranges) whose `X-Forwarded-For` is believed; from anyone
    /// else the client IP is the peer address.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// Largest request body accepted (SDK batches, beacons); larger gets 413.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Most events in one SDK batch; more gets 413.
    #[serde(default = "default_max_batch_events")]
    pub max_batch_events: usize,
    /// Longest a request may take (reading the body and publishing), else 408/503; also how
    /// long a connection may take to send a request head (an idle keep-alive connection
    /// included) before it is closed.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Pixel and link hits held while NATS is unreachable; beyond this they are counted as
    /// dropped (`touchstream_collect_dropped_total`).
    #[serde(default = "default_pixel_buffer_events")]
    pub pixel_buffer_events: usize,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_public_url() -> String {
    "http://127.0.0.1:8080".into()
}
fn default_max_body_bytes() -> usize {
    1 << 20
}
fn default_max_batch_events() -> usize {
    500
}
fn default_request_timeout_ms() -> u64 {
    10_000
}
fn default_pixel_buffer_events() -> usize {
    100_000
}

impl Default for CollectConfig {
    fn default() -> Self {
        CollectConfig {
            listen: default_listen(),
            public_url: default_public_url(),
            keys: Vec::new(),
            allowed_redirect_domains: Vec::new(),
            trusted_proxies: Vec::new(),
            max_body_bytes: default_max_body_bytes(),
            max_batch_events: default_max_batch_events(),
            request_timeout_ms: default_request_timeout_ms(),
            pixel_buffer_events: default_pixel_buffer_events(),
        }
    }
}

impl CollectConfig {
    /// Problems as (setting path, message): keys, URLs, domains, proxies, limits.
    pub fn check(&self) -> Vec<(String, String)> {
        let mut p = Vec::new();
        if self.keys.is_empty() {
            p.push((
                "collect.keys".into(),
                "at least one token key is needed".into(),
            ));
        }
        let mut ids = std::collections::HashSet::new();
        for (i, k) in self.keys.iter().enumerate() {
            let path = format!("collect.keys[{i}]");
            if !super::token::valid_key_id(&k.id) {
                p.push((
                    format!("{path}.id"),
                    format!("`{}` must match [A-Za-z0-9_-]{{1,16}}", k.id),
                ));
            }
            if !ids.insert(k.id.clone()) {
                p.push((
                    format!("{path}.id"),
                    format!("key id `{}` is used twice", k.id),
                ));
            }
            match (&k.secret, &k.secret_env) {
                (Some(s), None) if s.len() < 32 => p.push((
                    format!("{path}.secret"),
                    format!("must be at least 32 bytes, got {}", s.len()),
                )),
                (Some(_), None) | (None, Some(_)) => {}
                _ => p.push((
                    path.clone(),
                    "give exactly one of `secret` and `secret_env`".into(),
                )),
            }
        }
        if url::Url::parse(&self.public_url).is_err() {
            p.push((
                "collect.public_url".into(),
                format!("`{}` is not an absolute URL", self.public_url),
            ));
        }
        for (i, d) in self.allowed_redirect_domains.iter().enumerate() {
            if d.is_empty() || d.contains('/') || d.contains(':') || d.starts_with('.') {
                p.push((
                    format!("collect.allowed_redirect_domains[{i}]"),
                    format!("`{d}` must be a bare domain such as example.com"),
                ));
            }
        }
        for (i, t) in self.trusted_proxies.iter().enumerate() {
            if parse_cidr(t).is_none() {
                p.push((
                    format!("collect.trusted_proxies[{i}]"),
                    format!("`{t}` is not an IP address or CIDR range"),
                ));
            }
        }
        for (key, v) in [
            ("max_body_bytes", self.max_body_bytes as u64),
            ("max_batch_events", self.max_batch_events as u64),
            ("request_timeout_ms", self.request_timeout_ms),
            ("pixel_buffer_events", self.pixel_buffer_events as u64),
        ] {
            if v == 0 {
                p.push((format!("collect.{key}"), "must be greater than 0".into()));
            }
        }
        p
    }
}

/// An IP address or CIDR range: (network, prefix length).
pub fn parse_cidr(s: &str) -> Option<(std::net::IpAddr, u8)> {
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l.parse::<u8>().ok()?)),
        None => (s, None),
    };
    let ip: std::net::IpAddr = addr.parse().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = len.unwrap_or(max);
    (len <= max).then_some((ip, len))
}

//! The YAML config file: Traefik's `mirroring` shape plus the agent's own settings.
//!
//! Accepted shapes for the mirroring block (the first found is used):
//! - top level `mirroring: {name, port, mirrors: [{name, port, percent}]}` (a TraefikService's
//!   `mirroring`, as in Traefik's documented `app-multi-mirror` example);
//! - a Kubernetes TraefikService object: `apiVersion`, `kind`, `metadata`, `spec.mirroring`;
//! - Traefik's file provider: `http.services.<svc>.mirroring: {service, mirrors: [{name,
//!   percent}]}`, where services are found in the same `http.services` (`loadBalancer.servers`).
//!
//! Validation that needs only one value (percent range, URL syntax, header syntax) happens while
//! deserializing, so serde_yaml's error carries the line, column and field path. Field names are
//! camelCase as in Traefik; the agent's settings also accept the flag spelling (`capture-percent`).

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::replay::spec;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FileConfig {
    // Kubernetes envelope: accepted and ignored.
    pub api_version: Option<serde_yaml::Value>,
    pub kind: Option<serde_yaml::Value>,
    pub metadata: Option<serde_yaml::Value>,
    pub spec: Option<SpecBlock>,
    pub mirroring: Option<Mirroring>,
    pub http: Option<HttpBlock>,

    // Agent settings.
    #[serde(alias = "iface")]
    pub interface: Option<String>,
    /// cgroup v2 directories whose sockets are captured, instead of an interface.
    #[serde(alias = "cgroup")]
    pub cgroups: Option<Vec<std::path::PathBuf>>,
    #[serde(alias = "port")]
    pub ports: Option<Vec<Port>>,
    #[serde(alias = "capture-percent")]
    pub capture_percent: Option<CapturePercent>,
    #[serde(alias = "mirror-headers", alias = "headers")]
    pub mirror_headers: Option<Vec<HeaderSpec>>,
    #[serde(alias = "strip-headers")]
    pub strip_headers: Option<Vec<String>>,
    #[serde(alias = "host-mode")]
    pub host_mode: Option<String>,
    #[serde(alias = "host-suffix")]
    pub host_suffix: Option<String>,
    #[serde(alias = "mirror-body")]
    pub mirror_body: Option<bool>,
    #[serde(alias = "max-body-size")]
    pub max_body_size: Option<BodyLimit>,
    pub methods: Option<Vec<String>>,
    #[serde(alias = "path-allow")]
    pub path_allow: Option<Vec<String>>,
    #[serde(alias = "path-deny")]
    pub path_deny: Option<Vec<String>>,
    #[serde(alias = "header-match")]
    pub header_match: Option<Vec<String>>,
    #[serde(alias = "queue-size")]
    pub queue_size: Option<Positive>,
    #[serde(alias = "max-queue-bytes")]
    pub max_queue_bytes: Option<Positive>,
    #[serde(alias = "max-connections")]
    pub max_connections: Option<Positive>,
    /// `connection` (the default) or `none`, as `--ordering`.
    pub ordering: Option<String>,
    /// `independent` (the default) or `consistent`, as `--sampling`.
    pub sampling: Option<String>,
    #[serde(alias = "timeout-ms")]
    pub timeout_ms: Option<Positive>,
}

/// `spec:` of a Kubernetes TraefikService.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpecBlock {
    pub mirroring: Mirroring,
}

/// `http:` of Traefik's file provider; routers, middlewares etc. are ignored.
#[derive(Debug, Deserialize)]
pub struct HttpBlock {
    #[serde(default)]
    pub services: BTreeMap<String, Service>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Service {
    pub mirroring: Option<Mirroring>,
    pub load_balancer: Option<LoadBalancer>,
}

#[derive(Debug, Deserialize)]
pub struct LoadBalancer {
    #[serde(default)]
    pub servers: Vec<Server>,
}

#[derive(Debug, Deserialize)]
pub struct Server {
    pub url: Option<String>,
}

/// Traefik's `mirroring` service.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Mirroring {
    /// Kubernetes: the primary service's name.
    pub name: Option<String>,
    /// File provider: the primary service's name.
    pub service: Option<String>,
    pub namespace: Option<String>,
    pub kind: Option<String>,
    /// The primary's port: the port the agent captures.
    pub port: Option<Port>,
    pub mirror_body: Option<bool>,
    pub max_body_size: Option<BodyLimit>,
    pub health_check: Option<serde_yaml::Value>,
    #[serde(default)]
    pub mirrors: Vec<MirrorEntry>,
}

/// One entry of `mirrors:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MirrorEntry {
    pub name: String,
    pub namespace: Option<String>,
    pub kind: Option<String>,
    pub port: Option<Port>,
    /// Traefik's default is 0; ours is 100 (see `replay::spec`).
    pub percent: Option<Percent>,
    /// Agent extension: where to send, instead of the name resolved through DNS.
    pub host: Option<Host>,
    /// Agent extension: `http://host:port` or `https://host:port`, instead of name and port.
    pub url: Option<Url>,
    /// Agent extension, for `https://` mirrors: as the `--mirror` keys of the same names.
    pub ca: Option<String>,
    pub insecure: Option<bool>,
    pub sni: Option<String>,
    pub cert: Option<String>,
    pub key: Option<String>,
    /// Agent extension: `baseline` or `candidate` (the default), as the `--mirror` key.
    pub role: Option<String>,
    /// Agent extension: `auto` (the default), `h1` or `h2`, as the `--mirror` key.
    pub protocol: Option<String>,
}

/// A scalar as YAML gave it, for the validated newtypes below.
///
/// They implement `Deserialize` through [`ScalarVisitor`] rather than `#[serde(try_from)]`:
/// serde_yaml gives an error raised inside the visitor the scalar's own line and field path,
/// while a `try_from` error only gets the enclosing mapping's position.
#[derive(Debug, Clone, Copy)]
pub enum Scalar<'a> {
    Int(i128),
    Float(f64),
    Str(&'a str),
}

impl Scalar<'_> {
    fn number(self) -> Option<f64> {
        match self {
            Scalar::Int(i) => Some(i as f64),
            Scalar::Float(f) => Some(f),
            Scalar::Str(_) => None,
        }
    }
    fn int(self) -> Option<i128> {
        match self {
            Scalar::Int(i) => Some(i),
            _ => None,
        }
    }
}

impl std::fmt::Display for Scalar<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scalar::Int(i) => write!(f, "{i}"),
            Scalar::Float(x) => write!(f, "{x}"),
            Scalar::Str(s) => write!(f, "`{s}`"),
        }
    }
}

struct ScalarVisitor<T> {
    check: fn(Scalar) -> Result<T, String>,
    what: &'static str,
}

impl<'de, T> serde::de::Visitor<'de> for ScalarVisitor<T> {
    type Value = T;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(self.what)
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<T, E> {
        (self.check)(Scalar::Int(v.into())).map_err(E::custom)
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<T, E> {
        (self.check)(Scalar::Int(v.into())).map_err(E::custom)
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<T, E> {
        (self.check)(Scalar::Float(v)).map_err(E::custom)
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<T, E> {
        (self.check)(Scalar::Str(v)).map_err(E::custom)
    }
}

macro_rules! scalar {
    ($ty:ident, $what:literal, $check:expr) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                d.deserialize_any(ScalarVisitor {
                    check: $check,
                    what: $what,
                })
            }
        }
    };
}

/// A percent in 0-100.
#[derive(Debug, Clone, Copy)]
pub struct Percent(pub f64);
scalar!(Percent, "a percent", |v| {
    v.number()
        .and_then(|n| spec::parse_percent(&n.to_string()))
        .map(Percent)
        .ok_or_else(|| format!("percent {v} is not between 0 and 100"))
});

/// The kernel's flow capture share: [0, 100] (0 captures nothing, which only a capture-only
/// run can want: with mirrors it is below their percent and refused there).
#[derive(Debug, Clone, Copy)]
pub struct CapturePercent(pub f64);
scalar!(CapturePercent, "a percent", |v| {
    match v.number().and_then(|n| spec::parse_percent(&n.to_string())) {
        Some(p) => Ok(CapturePercent(p)),
        None => Err(format!("capture percent {v} is not in [0, 100]")),
    }
});

/// A TCP port, 1-65535. Kubernetes named ports (`port: http`) are refused with a reason.
#[derive(Debug, Clone, Copy)]
pub struct Port(pub u16);
scalar!(Port, "a port number", |v| match v {
    Scalar::Int(p @ 1..=65535) => Ok(Port(p as u16)),
    Scalar::Str(s) => Err(format!(
        "named port `{s}` is not supported: give the port number"
    )),
    _ => Err(format!("port {v} is not in 1-65535")),
});

/// A positive integer (queue size, connections, milliseconds).
#[derive(Debug, Clone, Copy)]
pub struct Positive(pub u64);
scalar!(Positive, "a positive integer", |v| match v.int() {
    Some(n @ 1..) if n <= u64::MAX as i128 => Ok(Positive(n as u64)),
    _ => Err(format!("{v} must be an integer of at least 1")),
});

/// Traefik's `maxBodySize`: bytes, or -1 for no limit (Traefik's default).
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub Option<u64>);
scalar!(BodyLimit, "bytes or -1", |v| match v.int() {
    Some(-1) => Ok(BodyLimit(None)),
    Some(n @ 0..) if n <= u64::MAX as i128 => Ok(BodyLimit(Some(n as u64))),
    _ => Err(format!("maxBodySize {v}: expected bytes or -1 (no limit)")),
});

/// A host name or IP address (IPv6 with or without brackets).
#[derive(Debug, Clone)]
pub struct Host(pub String);
scalar!(Host, "a host name or IP address", |v| {
    let Scalar::Str(s) = v else {
        return Err(format!("host {v} is not a host name or IP address"));
    };
    let bare = s.trim_start_matches('[').trim_end_matches(']');
    let url = if bare.contains(':') {
        format!("http://[{bare}]")
    } else {
        format!("http://{bare}")
    };
    spec::parse_url(s, &url)
        .map(|(h, _, _)| Host(h))
        .map_err(|_| format!("host {v} is not a host name or IP address"))
});

/// An `http://host:port` or `https://host:port` URL.
#[derive(Debug, Clone)]
pub struct Url {
    pub host: String,
    pub port: u16,
    pub https: bool,
}
scalar!(Url, "an http:// or https:// URL", |v| {
    let Scalar::Str(s) = v else {
        return Err(format!("url {v} is not an http:// or https:// URL"));
    };
    spec::parse_url(s, s)
        .map(|(host, port, https)| Url { host, port, https })
        .map_err(|e| strip_spec_prefix(&e.to_string()))
});

/// `'Name: value'`, validated as `--mirror-header` is.
#[derive(Debug, Clone)]
pub struct HeaderSpec(pub (String, String));
scalar!(HeaderSpec, "'Name: value'", |v| match v {
    Scalar::Str(s) => crate::replay::rewrite::parse_header(s)
        .map(HeaderSpec)
        .map_err(|e| e.to_string()),
    _ => Err(format!("header {v}: expected 'Name: value'")),
});

/// SpecError messages start with "mirror `SPEC`: "; inside the file the spec is the value itself.
fn strip_spec_prefix(msg: &str) -> String {
    msg.split_once("`: ").map_or(msg, |(_, m)| m).to_string()
}

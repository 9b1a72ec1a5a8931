//! Mirror specifications: `--mirror URL[,percent=P][,name=NAME][,role=baseline][,protocol=auto|h1|h2]`
//! (and, for `https://` URLs,
//! `ca=FILE`, `insecure=true`, `sni=NAME`, `cert=FILE,key=FILE`) and the validated [`MirrorSpec`]
//! both the command line and the config file produce.
//!
//! Owns parsing and validation of one mirror's address, share and name. It does not resolve
//! names (that happens when connecting, so cluster DNS changes are followed) and does not know
//! about the config file.
//!
//! Percent defaults to 100. Traefik's `mirrors[].percent` defaults to 0, which makes sense in a
//! proxy config where a mirror can be declared and switched on later; a mirror named on our command
//! line is meant to receive traffic, so ours defaults to 100, as Envoy's `runtime_fraction` does.

use std::path::PathBuf;

use thiserror::Error;

/// Default share of captured requests a mirror receives, in percent.
pub const DEFAULT_PERCENT: f64 = 100.0;

/// One mirror: where to send copies and which share of requests.
#[derive(Debug, Clone, PartialEq)]
pub struct MirrorSpec {
    /// Label used in the exit table and metrics.
    pub name: String,
    /// Host as written: a DNS name, an IPv4 address, or an IPv6 address without brackets.
    pub host: String,
    pub port: u16,
    /// Share of requests this mirror receives, 0-100.
    pub percent: f64,
    /// `https://`: TLS to the mirror, with these settings. `None`: plain `http://`.
    pub tls: Option<TlsSpec>,
    /// What the comparison makes of this mirror's answers.
    pub role: MirrorRole,
    /// The HTTP version copies travel in (`protocol=`).
    pub protocol: MirrorProtocol,
}

/// The HTTP version a mirror's copies travel in (`protocol=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MirrorProtocol {
    /// As captured: HTTP/2 streams over HTTP/2, HTTP/1.x requests over HTTP/1.1.
    #[default]
    Auto,
    /// Everything over HTTP/1.1 (HTTP/2 streams in their HTTP/1.1 form).
    Http1,
    /// Everything over HTTP/2 (h2c with prior knowledge; ALPN `h2` for `https://`).
    Http2,
}

impl MirrorProtocol {
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Some(Self::Auto),
            "h1" | "http1" | "http/1.1" => Some(Self::Http1),
            "h2" | "http2" | "http/2" => Some(Self::Http2),
            _ => None,
        }
    }

    /// Whether a copy captured as HTTP/2 (`captured_h2`) goes to this mirror over HTTP/2.
    pub fn sends_h2(self, captured_h2: bool) -> bool {
        match self {
            Self::Auto => captured_h2,
            Self::Http1 => false,
            Self::Http2 => true,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Http1 => "h1",
            Self::Http2 => "h2",
        }
    }
}

/// A mirror's part in the comparison (`role=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MirrorRole {
    /// The version under test: its differences from the primary are reported.
    #[default]
    Candidate,
    /// A second instance of the primary's version: what differs between it and the primary
    /// is noise, learned and discounted from the candidates' differences.
    Baseline,
}

impl MirrorRole {
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "candidate" => Some(Self::Candidate),
            "baseline" => Some(Self::Baseline),
            _ => None,
        }
    }
}

/// TLS settings of an `https://` mirror (files are read when the agent starts, see
/// [`super::tls`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsSpec {
    /// PEM file of the CA certificates to trust instead of the system's.
    pub ca: Option<PathBuf>,
    /// Accept any server certificate (tests, self-signed staging mirrors).
    pub insecure: bool,
    /// Server name to send and verify instead of the URL's host.
    pub sni: Option<String>,
    /// Client certificate chain and its private key (PEM), for mirrors that ask for one.
    pub client_auth: Option<(PathBuf, PathBuf)>,
}

impl MirrorSpec {
    /// `host:port` as it goes into a Host header (`[::1]:8080` for IPv6).
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Why a mirror specification was refused. Each message is one line naming the bad part.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SpecError {
    /// The URL part is empty.
    #[error("mirror `{spec}`: missing URL (expected http://HOST:PORT)")]
    MissingUrl { spec: String },
    /// A scheme other than `http://` or `https://`.
    #[error("mirror `{spec}`: scheme `{scheme}` is not supported (http:// or https://)")]
    UnsupportedScheme { spec: String, scheme: String },
    /// A TLS option with an `http://` URL, `cert` without `key`, a bad `insecure` or `sni`.
    #[error("mirror `{spec}`: {why}")]
    BadTls { spec: String, why: String },
    /// The URL is not `http://HOST[:PORT][/]`.
    #[error("mirror `{spec}`: bad URL: {why}")]
    BadUrl { spec: String, why: &'static str },
    /// An option other than `percent=`, `name=`, `role=` and the TLS ones.
    #[error(
        "mirror `{spec}`: unknown option `{key}` (expected percent=P, name=NAME, \
         role=baseline|candidate, protocol=auto|h1|h2, or for https ca=FILE, insecure=true, sni=NAME, cert=FILE, key=FILE)"
    )]
    UnknownKey { spec: String, key: String },
    /// The same option given twice.
    #[error("mirror `{spec}`: option `{key}` given twice")]
    DuplicateKey { spec: String, key: String },
    /// Percent is not a number in 0-100.
    #[error("mirror `{spec}`: percent `{value}` is not a number between 0 and 100")]
    BadPercent { spec: String, value: String },
    /// `role=` other than `baseline` or `candidate`.
    #[error("mirror `{spec}`: role `{value}` is not baseline or candidate")]
    BadRole { spec: String, value: String },
    /// `protocol=` other than `auto`, `h1` or `h2`.
    #[error("mirror `{spec}`: protocol `{value}` is not auto, h1 or h2")]
    BadProtocol { spec: String, value: String },
    /// Empty name.
    #[error("mirror `{spec}`: name must not be empty")]
    EmptyName { spec: String },
    /// A name outside [`check_name`]'s rule; both shown escaped, so a newline cannot forge a
    /// line of the agent's output.
    #[error("mirror {spec:?}: name {name:?}: {why}")]
    BadName {
        spec: String,
        name: String,
        why: &'static str,
    },
}

/// Longest mirror name, as a DNS label.
pub const MAX_NAME_LEN: usize = 63;

/// A name the operator gives a mirror: 1 to [`MAX_NAME_LEN`] ASCII letters, digits, `.`, `-`,
/// `_` or `@` (Traefik's `name@provider`). Names become metric labels, log fields and rows of
/// the exit table: no spaces, no control characters, bounded length. (A name the agent derives
/// from the URL, `host:port`, is already made of a validated host and port.)
pub fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err("must be 1 to 63 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'@'))
    {
        return Err("may hold only letters, digits, `.`, `-`, `_` and `@`");
    }
    Ok(())
}

/// Parses `URL[,percent=P][,name=NAME]`. Name defaults to the URL's authority.
pub fn parse_mirror(spec: &str) -> Result<MirrorSpec, SpecError> {
    let spec = spec.trim();
    let mut parts = spec.split(',');
    let url = parts.next().unwrap_or("").trim();
    if url.is_empty() {
        return Err(SpecError::MissingUrl { spec: spec.into() });
    }
    let (host, port, https) = parse_url(spec, url)?;
    let mut percent = None;
    let mut name = None;
    let mut role = None;
    let mut protocol = None;
    let mut tls = TlsOptions::default();
    for opt in parts {
        let (key, value) = opt.split_once('=').unwrap_or((opt, ""));
        let key = key.trim();
        let value = value.trim();
        let slot_taken = match key {
            "percent" => percent
                .replace(parse_percent(value).ok_or_else(|| SpecError::BadPercent {
                    spec: spec.into(),
                    value: value.into(),
                })?)
                .is_some(),
            "name" => {
                if value.is_empty() {
                    return Err(SpecError::EmptyName { spec: spec.into() });
                }
                check_name(value).map_err(|why| SpecError::BadName {
                    spec: spec.into(),
                    name: value.into(),
                    why,
                })?;
                name.replace(value.to_string()).is_some()
            }
            "role" => role
                .replace(MirrorRole::parse(value).ok_or_else(|| SpecError::BadRole {
                    spec: spec.into(),
                    value: value.into(),
                })?)
                .is_some(),
            "protocol" => protocol
                .replace(
                    MirrorProtocol::parse(value).ok_or_else(|| SpecError::BadProtocol {
                        spec: spec.into(),
                        value: value.into(),
                    })?,
                )
                .is_some(),
            "ca" | "insecure" | "sni" | "cert" | "key" => {
                tls.set(key, value).map_err(|why| SpecError::BadTls {
                    spec: spec.into(),
                    why,
                })?
            }
            _ => {
                return Err(SpecError::UnknownKey {
                    spec: spec.into(),
                    key: key.into(),
                });
            }
        };
        if slot_taken {
            return Err(SpecError::DuplicateKey {
                spec: spec.into(),
                key: key.into(),
            });
        }
    }
    let tls = tls.finish(https).map_err(|why| SpecError::BadTls {
        spec: spec.into(),
        why,
    })?;
    let mut out = MirrorSpec {
        name: String::new(),
        host,
        port,
        percent: percent.unwrap_or(DEFAULT_PERCENT),
        tls,
        role: role.unwrap_or_default(),
        protocol: protocol.unwrap_or_default(),
    };
    out.name = name.unwrap_or_else(|| out.authority());
    Ok(out)
}

/// The TLS options of a mirror as given, one at a time (`--mirror` keys, config file fields).
#[derive(Debug, Default)]
pub struct TlsOptions {
    ca: Option<PathBuf>,
    insecure: Option<bool>,
    sni: Option<String>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
}

impl TlsOptions {
    /// Sets `key` (`ca`, `insecure`, `sni`, `cert`, `key`); returns whether it was set already.
    pub fn set(&mut self, key: &str, value: &str) -> Result<bool, String> {
        let path = |what: &str| {
            if value.is_empty() {
                Err(format!("{what} needs a file"))
            } else {
                Ok(PathBuf::from(value))
            }
        };
        Ok(match key {
            "ca" => self.ca.replace(path("ca")?).is_some(),
            "cert" => self.cert.replace(path("cert")?).is_some(),
            "key" => self.key.replace(path("key")?).is_some(),
            "insecure" => {
                let v = match value {
                    "true" => true,
                    "false" => false,
                    _ => return Err(format!("insecure `{value}` is not true or false")),
                };
                self.insecure.replace(v).is_some()
            }
            "sni" => {
                rustls_pki_types::ServerName::try_from(value)
                    .map_err(|_| format!("sni `{value}` is not a server name"))?;
                self.sni.replace(value.to_owned()).is_some()
            }
            _ => return Err(format!("unknown TLS option `{key}`")),
        })
    }

    /// The settings of a mirror whose URL is `https://` (`https`) or not: TLS options with an
    /// `http://` URL, and a client certificate without its key or a key without its
    /// certificate, are refused.
    pub fn finish(self, https: bool) -> Result<Option<TlsSpec>, String> {
        let given = self.ca.is_some()
            || self.insecure.is_some()
            || self.sni.is_some()
            || self.cert.is_some()
            || self.key.is_some();
        if !https {
            return if given {
                Err("ca, insecure, sni, cert and key need an https:// URL".into())
            } else {
                Ok(None)
            };
        }
        let client_auth = match (self.cert, self.key) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => return Err("cert and key go together".into()),
        };
        Ok(Some(TlsSpec {
            ca: self.ca,
            insecure: self.insecure.unwrap_or(false),
            sni: self.sni,
            client_auth,
        }))
    }
}

/// A percent in 0-100 (fractions allowed), or `None`.
pub fn parse_percent(value: &str) -> Option<f64> {
    let p: f64 = value.parse().ok()?;
    (p.is_finite() && (0.0..=100.0).contains(&p)).then_some(p)
}

/// Parses `http://HOST[:PORT][/]` or `https://...` into host, port (default 80 or 443) and
/// whether it is `https`.
///
/// Hand-written rather than using the `url` crate: we accept a narrow grammar (no userinfo, no
/// path, no query, http only) and must reject everything else with a precise one-line reason,
/// which is less code than post-checking a general URL parser's output.
pub fn parse_url(spec: &str, url: &str) -> Result<(String, u16, bool), SpecError> {
    let bad = |why| SpecError::BadUrl {
        spec: spec.into(),
        why,
    };
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(bad("expected http://HOST:PORT"));
    };
    let https = if scheme.eq_ignore_ascii_case("https") {
        true
    } else if scheme.eq_ignore_ascii_case("http") {
        false
    } else {
        return Err(SpecError::UnsupportedScheme {
            spec: spec.into(),
            scheme: scheme.into(),
        });
    };
    // A single trailing slash is harmless; any other path would suggest we rewrite targets,
    // which we do not (the mirror receives the client's request target unchanged).
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains(['/', '?', '#']) {
        return Err(bad(
            "a path, query or fragment is not allowed (requests keep their own target)",
        ));
    }
    if authority.contains('@') {
        return Err(bad("user info is not allowed"));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (addr, after) = v6.split_once(']').ok_or_else(|| bad("unclosed `[`"))?;
        if addr.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(bad("invalid IPv6 address"));
        }
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or_else(|| bad("junk after `]`"))?),
        };
        (addr, port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(bad("missing host"));
    }
    if !authority.starts_with('[')
        && !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
    {
        return Err(bad("invalid character in host"));
    }
    let port = match port {
        None if https => 443,
        None => 80,
        Some(p) => match p.parse::<u16>() {
            Ok(0) | Err(_) => return Err(bad("port must be 1-65535")),
            Ok(p) => p,
        },
    };
    Ok((host.to_string(), port, https))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_spec() {
        let m = parse_mirror("http://10.0.0.6:8080,percent=50,name=app-v3").unwrap();
        assert_eq!(m.role, MirrorRole::Candidate);
        let b = parse_mirror("http://10.0.0.7:8080,role=Baseline,name=app-v2b").unwrap();
        assert_eq!(b.role, MirrorRole::Baseline);
        assert_eq!(m.name, "app-v3");
        assert_eq!(m.host, "10.0.0.6");
        assert_eq!(m.port, 8080);
        assert_eq!(m.percent, 50.0);
    }

    #[test]
    fn protocol_key() {
        assert_eq!(
            parse_mirror("http://a").unwrap().protocol,
            MirrorProtocol::Auto
        );
        for (v, want) in [
            ("auto", MirrorProtocol::Auto),
            ("h1", MirrorProtocol::Http1),
            ("H2", MirrorProtocol::Http2),
            ("http2", MirrorProtocol::Http2),
        ] {
            let m = parse_mirror(&format!("http://a,protocol={v}")).unwrap();
            assert_eq!(m.protocol, want, "{v}");
        }
        assert!(MirrorProtocol::Auto.sends_h2(true) && !MirrorProtocol::Auto.sends_h2(false));
        assert!(MirrorProtocol::Http2.sends_h2(false) && !MirrorProtocol::Http1.sends_h2(true));
        assert_eq!(
            parse_mirror("http://a,protocol=h3")
                .unwrap_err()
                .to_string(),
            "mirror `http://a,protocol=h3`: protocol `h3` is not auto, h1 or h2"
        );
        assert_eq!(
            parse_mirror("http://a,protocol=h1,protocol=h2")
                .unwrap_err()
                .to_string(),
            "mirror `http://a,protocol=h1,protocol=h2`: option `protocol` given twice"
        );
    }

    #[test]
    fn https_mirrors_and_their_tls_options() {
        let m = parse_mirror("https://shadow.example").unwrap();
        assert_eq!((m.port, m.tls.clone()), (443, Some(TlsSpec::default())));
        let m = parse_mirror(
            "https://10.0.0.5:8443,ca=/etc/ca.pem,sni=shadow.internal,cert=/c.pem,key=/k.pem,name=s",
        )
        .unwrap();
        let tls = m.tls.unwrap();
        assert_eq!(tls.ca.as_deref(), Some(std::path::Path::new("/etc/ca.pem")));
        assert_eq!(tls.sni.as_deref(), Some("shadow.internal"));
        assert_eq!(tls.client_auth, Some(("/c.pem".into(), "/k.pem".into())));
        assert!(!tls.insecure);
        assert!(
            parse_mirror("https://h,insecure=true")
                .unwrap()
                .tls
                .unwrap()
                .insecure
        );
        assert_eq!(parse_mirror("http://h").unwrap().tls, None);
    }

    #[test]
    fn defaults() {
        let m = parse_mirror("http://app-v2").unwrap();
        assert_eq!((m.host.as_str(), m.port, m.percent), ("app-v2", 80, 100.0));
        assert_eq!(m.name, "app-v2:80");
        let m = parse_mirror("http://[::1]:9000/").unwrap();
        assert_eq!((m.host.as_str(), m.port), ("::1", 9000));
        assert_eq!(m.authority(), "[::1]:9000");
        let m = parse_mirror("http://h:1,name=x, percent=0.5").unwrap();
        assert_eq!((m.name.as_str(), m.percent), ("x", 0.5));
    }

    #[test]
    fn errors_are_one_line_and_precise() {
        let cases = [
            ("", "missing URL"),
            ("ftp://a:21", "scheme `ftp` is not supported"),
            ("http://a,ca=/x.pem", "need an https:// URL"),
            ("https://a,cert=/c.pem", "cert and key go together"),
            ("https://a,key=/k.pem", "cert and key go together"),
            ("https://a,insecure=yes", "insecure `yes`"),
            ("https://a,sni=a b", "sni `a b`"),
            ("https://a,ca=", "ca needs a file"),
            ("https://a,ca=/x,ca=/y", "given twice"),
            ("10.0.0.5:8080", "expected http://HOST:PORT"),
            ("http://a:8080/api", "path"),
            ("http://a:0", "port must be 1-65535"),
            ("http://a:70000", "port must be 1-65535"),
            ("http://:80", "missing host"),
            ("http://a b:80", "invalid character"),
            ("http://[::1:80", "unclosed"),
            ("http://[zz]:80", "invalid IPv6"),
            ("http://u@a:80", "user info"),
            ("http://a,weight=3", "unknown option `weight`"),
            ("http://a,percent=101", "percent `101`"),
            (
                "http://a,role=shadow",
                "role `shadow` is not baseline or candidate",
            ),
            ("http://a,role=baseline,role=baseline", "given twice"),
            ("http://a,percent=-1", "percent `-1`"),
            ("http://a,percent=NaN", "percent `NaN`"),
            ("http://a,percent=", "percent ``"),
            ("http://a,name=", "name must not be empty"),
            ("http://a,name=x,name=y", "given twice"),
            ("http://a,name=app v2", "may hold only"),
            ("http://a,name=x\ny", "may hold only"),
            ("http://a,name=x\u{1b}[31m", "may hold only"),
        ];
        for (spec, want) in cases {
            let err = parse_mirror(spec).expect_err(spec).to_string();
            assert!(err.contains(want), "{spec}: {err}");
            assert!(!err.contains('\n'), "{spec}: {err}");
        }
        let long = format!("http://a,name={}", "n".repeat(MAX_NAME_LEN + 1));
        let err = parse_mirror(&long).unwrap_err().to_string();
        assert!(err.contains("1 to 63"), "{err}");
        assert!(parse_mirror(&format!("http://a,name={}", "n".repeat(MAX_NAME_LEN))).is_ok());
        assert!(parse_mirror("http://a,name=app-v2@kubernetescrd").is_ok());
    }
}

//! The telemetry flags and the standard `OTEL_*` environment into [`TelemetryConfig`].

use crate::cli::TelemetryArgs;
use crate::telemetry::{
    OtlpConfig, OtlpProtocol, TelemetryConfig, TelemetryError, TraceparentMode,
};

/// From the telemetry flags and the standard environment: OTLP is on when `--otlp-endpoint`
/// or any `OTEL_EXPORTER_OTLP_*ENDPOINT` is set, unless `OTEL_SDK_DISABLED=true`.
pub fn build(args: &TelemetryArgs) -> Result<TelemetryConfig, TelemetryError> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    from_parts(
        args.metrics_addr.as_deref(),
        args.otlp_endpoint.as_deref(),
        args.otlp_protocol.as_deref(),
        args.otlp_traceparent.as_deref(),
        env,
    )
}

/// [`build`] with the environment passed in (testable without `set_var`).
fn from_parts(
    metrics_addr: Option<&str>,
    otlp_endpoint: Option<&str>,
    otlp_protocol: Option<&str>,
    traceparent: Option<&str>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<TelemetryConfig, TelemetryError> {
    let metrics_addr = match metrics_addr {
        None => None,
        Some(a) => Some(
            std::net::ToSocketAddrs::to_socket_addrs(a)
                .ok()
                .and_then(|mut it| it.next())
                .ok_or_else(|| TelemetryError::BadMetricsAddr(a.into()))?,
        ),
    };
    if let Some(e) = otlp_endpoint
        && !(e.starts_with("http://") || e.starts_with("https://"))
    {
        return Err(TelemetryError::BadEndpoint(e.into()));
    }
    let protocol = match otlp_protocol
        .map(str::to_string)
        .or_else(|| env("OTEL_EXPORTER_OTLP_PROTOCOL"))
    {
        Some(p) => OtlpProtocol::parse(&p)?,
        None => OtlpProtocol::default(),
    };
    let traceparent = match traceparent {
        Some(m) => {
            TraceparentMode::parse(m).ok_or_else(|| TelemetryError::BadTraceparentMode(m.into()))?
        }
        None => TraceparentMode::default(),
    };
    let disabled = env("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let from_env = [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|k| env(k).is_some());
    let otlp = (!disabled && (otlp_endpoint.is_some() || from_env)).then(|| OtlpConfig {
        endpoint: otlp_endpoint.map(str::to_string),
        protocol,
        export_interval: None,
        service_name: None,
        traces: env("OTEL_TRACES_EXPORTER").is_none_or(|v| v != "none"),
    });
    Ok(TelemetryConfig {
        metrics_addr,
        otlp,
        traceparent,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::{OtlpProtocol, TraceparentMode};

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn otlp_is_off_without_endpoint() {
        let c = from_parts(None, None, None, None, env_of(&[])).unwrap();
        assert!(c.otlp.is_none() && c.metrics_addr.is_none());
        assert_eq!(c.traceparent, TraceparentMode::Rewrite);
    }

    #[test]
    fn flags_and_environment() {
        let c = from_parts(
            Some("127.0.0.1:9464"),
            Some("http://collector:4317"),
            Some("grpc"),
            Some("strip"),
            env_of(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")]),
        )
        .unwrap();
        assert_eq!(c.metrics_addr, Some("127.0.0.1:9464".parse().unwrap()));
        let o = c.otlp.unwrap();
        assert_eq!(o.protocol, OtlpProtocol::Grpc, "the flag wins");
        assert_eq!(o.endpoint.as_deref(), Some("http://collector:4317"));
        assert!(o.traces);
        assert_eq!(c.traceparent, TraceparentMode::Strip);

        let c = from_parts(
            None,
            None,
            None,
            None,
            env_of(&[
                (
                    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                    "http://c:4318/v1/traces",
                ),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
                ("OTEL_TRACES_EXPORTER", "none"),
            ]),
        )
        .unwrap();
        let o = c.otlp.unwrap();
        assert_eq!(o.endpoint, None, "the exporter reads the variables itself");
        assert_eq!(o.protocol, OtlpProtocol::HttpProtobuf);
        assert!(!o.traces);

        let c = from_parts(
            None,
            Some("http://c:4318"),
            None,
            None,
            env_of(&[("OTEL_SDK_DISABLED", "true")]),
        )
        .unwrap();
        assert!(c.otlp.is_none());
    }

    #[test]
    fn bad_values_are_one_line_errors() {
        let e = |m, ep, p, t| {
            from_parts(m, ep, p, t, env_of(&[]))
                .unwrap_err()
                .to_string()
        };
        assert!(e(Some("nonsense"), None, None, None).contains("--metrics-addr"));
        assert!(e(None, Some("collector:4317"), None, None).contains("--otlp-endpoint"));
        assert!(e(None, None, Some("thrift"), None).contains("--otlp-protocol"));
        assert!(e(None, None, None, Some("drop")).contains("--otlp-traceparent"));
        let err = from_parts(None, None, Some("x"), None, env_of(&[]));
        assert_eq!(err.unwrap_err().exit_code(), 2);
    }
}

//! Command-line flags. Every flag can also be set through a `MIRROR_*` environment variable.
//!
//! Owns the clap types: what the operator can type, grouped, with type checks only. `config`
//! is the only reader of these structs: it validates every value once and builds each stage's
//! settings; `main` only picks the subcommand.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "mirror-agent",
    version,
    about = "Mirrors live HTTP/1.x traffic to shadow services, passively, with eBPF",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print a preflight table: kernel, BTF, TCX, BPF syscall, capabilities.
    Check,
}

/// Flags of the main mode, in groups: where requests come from (capture), the limits of the
/// stages, what happens to them (replay, comparison), what is written (output) and exported
/// (telemetry). Read by `config` only, which builds each stage's own settings from them.
#[derive(Debug, Args, Clone)]
pub struct RunArgs {
    #[command(flatten)]
    pub capture: CaptureArgs,
    #[command(flatten)]
    pub limits: LimitArgs,
    #[command(flatten)]
    pub replay: ReplayArgs,
    #[command(flatten)]
    pub compare: CompareArgs,
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
    /// Check the flags and the config file (--config), print what would run, and exit: 0 when
    /// they are valid, 2 with the one-line error otherwise. Attaches nothing, opens no output,
    /// connects nowhere (mirror names are not resolved): for CI and Kubernetes ConfigMaps.
    #[arg(long, env = "MIRROR_CHECK_CONFIG")]
    pub check_config: bool,
}

/// Where segments come from: an interface (live) or a pcap file, and which of them.
#[derive(Debug, Args, Clone)]
pub struct CaptureArgs {
    /// Interface to capture on (live mode).
    #[arg(long, env = "MIRROR_IFACE", help_heading = "Capture")]
    pub iface: Option<String>,
    /// Capture only the sockets of the processes in this cgroup v2 directory and its children
    /// (repeatable; a pod: /sys/fs/cgroup/kubepods.slice/.../kubepods-...-pod<uid>.slice).
    /// Instead of --iface; works with any CNI and with hostNetwork.
    #[arg(
        long = "cgroup",
        env = "MIRROR_CGROUPS",
        value_delimiter = ',',
        help_heading = "Capture"
    )]
    pub cgroups: Vec<PathBuf>,
    /// Destination port to capture (repeatable, up to 64). In pcap mode, without --port every
    /// flow whose client side starts with an HTTP request line is taken.
    #[arg(
        long = "port",
        env = "MIRROR_PORTS",
        value_delimiter = ',',
        help_heading = "Capture"
    )]
    pub ports: Vec<u32>,
    /// Share of flows the kernel captures, 0-100 (default: the largest mirror percent, or 100).
    #[arg(long, env = "MIRROR_CAPTURE_PERCENT", help_heading = "Capture")]
    pub capture_percent: Option<f64>,
    /// Ring buffer size in bytes, a power of two.
    #[arg(long, env = "MIRROR_RING_BUFFER_SIZE", default_value_t = 16 << 20, help_heading = "Capture")]
    pub ring_buffer_size: u64,
    /// Stop after this many seconds (default: run until SIGINT/SIGTERM).
    #[arg(long, env = "MIRROR_DURATION", help_heading = "Capture")]
    pub duration: Option<f64>,
    /// How the classifiers attach: `auto` (TCX, else clsact + tc filter on kernels before 6.6),
    /// `tcx` (TCX or fail), `tc` (clsact + tc filter, removed on exit with the clsact the agent
    /// created; a killed agent's filters are removed by the next agent in the same network
    /// namespace; other filters are never touched).
    #[arg(
        long,
        env = "MIRROR_ATTACH",
        default_value = "auto",
        help_heading = "Capture"
    )]
    pub attach: String,
    /// How the classifiers copy payload into the ring: `auto` (one copy into ring reservations,
    /// else the scratch-copy fallback), `reserve` (one copy or fail), `scratch` (the fallback).
    /// For tests and benchmarks.
    #[arg(
        long,
        env = "MIRROR_CAPTURE_COPY",
        default_value = "auto",
        hide = true,
        help_heading = "Capture"
    )]
    pub capture_copy: String,
    /// Read the plaintext of services that terminate TLS themselves, through uprobes on
    /// OpenSSL (live mode): `off`; `auto` (the libssl the processes listening on the captured
    /// ports map, else the system's; every process that maps it, also ones started later);
    /// `follow` (as auto, and every 5 s the libssl files of new listeners too, e.g. a new image
    /// of the service: keeps CAP_SYS_ADMIN and CAP_SYS_PTRACE for that); or libssl paths,
    /// comma-separated. The classifiers then leave those ports' ciphertext alone.
    #[arg(
        long,
        env = "MIRROR_TLS",
        default_value = "off",
        help_heading = "Capture"
    )]
    pub tls: String,
    /// A binary with OpenSSL linked in statically, read like a libssl (by symbol; repeatable).
    #[arg(
        long = "tls-binary",
        env = "MIRROR_TLS_BINARIES",
        value_delimiter = ',',
        help_heading = "Capture"
    )]
    pub tls_binaries: Vec<PathBuf>,
    /// With `--tls`: how long connections that were already open when the agent started may
    /// stay idle before they are no longer waited for, in seconds (0: as long as they stay
    /// open). Until each is seen, every syscall of the node takes the kernel's slower tracing
    /// path; a connection given up is counted, and its later requests are not read.
    #[arg(
        long,
        env = "MIRROR_TLS_OPEN_WAIT_SECS",
        default_value_t = 60,
        help_heading = "Capture"
    )]
    pub tls_open_wait_secs: u64,
    /// Read packets from a pcap or pcapng file instead of an interface.
    #[arg(long, env = "MIRROR_PCAP", help_heading = "Capture")]
    pub pcap: Option<PathBuf>,
}

/// Bounds of reassembly and HTTP framing.
#[derive(Debug, Args, Clone)]
pub struct LimitArgs {
    /// Maximum flows tracked at once; beyond it the least recently active is evicted (counted).
    #[arg(
        long,
        env = "MIRROR_MAX_FLOWS",
        default_value_t = 65536,
        help_heading = "Limits"
    )]
    pub max_flows: usize,
    /// Global budget of out-of-order and partial-request bytes across all flows.
    #[arg(long, env = "MIRROR_MEMORY_BUDGET", default_value_t = 256 << 20, help_heading = "Limits")]
    pub memory_budget: usize,
    /// Per-direction cap of out-of-order bytes.
    #[arg(long, env = "MIRROR_FLOW_BUFFER", default_value_t = 4 << 20, help_heading = "Limits")]
    pub flow_buffer: usize,
    /// How long a hole waits for its bytes before it is declared lost, in milliseconds.
    #[arg(
        long,
        env = "MIRROR_GAP_TIMEOUT_MS",
        default_value_t = 1000,
        help_heading = "Limits"
    )]
    pub gap_timeout_ms: u64,
    /// Idle time after which a flow is expired, in seconds.
    #[arg(
        long,
        env = "MIRROR_FLOW_IDLE_SECS",
        default_value_t = 120,
        help_heading = "Limits"
    )]
    pub flow_idle_secs: u64,
    /// Maximum size of a request or response head.
    #[arg(long, env = "MIRROR_MAX_HEAD_BYTES", default_value_t = 64 * 1024, help_heading = "Limits")]
    pub max_head_bytes: usize,
    /// Maximum header fields in a head.
    #[arg(
        long,
        env = "MIRROR_MAX_HEADERS",
        default_value_t = 128,
        help_heading = "Limits"
    )]
    pub max_headers: usize,
    /// Threads of the live agent: `auto`, or 1 to 64. With 1, capture, the mirror connections
    /// and the exporters share one thread: nothing is handed between threads (the least CPU
    /// per request), and the agent uses one CPU at most. With N, capture has its own thread and
    /// the rest N-1 more. `auto`: 1 when the agent may run on only one CPU (its CPU affinity or
    /// its cgroup's CPU quota), else 3.
    #[arg(
        long,
        env = "MIRROR_THREADS",
        default_value = "auto",
        help_heading = "Limits"
    )]
    pub threads: String,
}

/// Mirrors and what they receive; `--from` replays a recording instead of capturing.
#[derive(Debug, Args, Clone)]
pub struct ReplayArgs {
    /// Mirror: http://HOST[:PORT][,percent=P][,name=NAME] (repeatable; replaces the config
    /// file's mirrors). Percent defaults to 100: Traefik's default is 0 because a proxy config may
    /// declare a mirror before switching it on, but a mirror named here is meant to receive
    /// traffic (Envoy's default is 100 too). https is not supported yet.
    #[arg(
        long = "mirror",
        env = "MIRROR_MIRRORS",
        value_delimiter = ';',
        help_heading = "Replay"
    )]
    pub mirrors: Vec<String>,
    /// YAML config file (Traefik `mirroring` shape plus agent settings). Flags override it.
    #[arg(long, env = "MIRROR_CONFIG", help_heading = "Replay")]
    pub config: Option<PathBuf>,
    /// Replay a recording made with --record instead of capturing.
    #[arg(long, env = "MIRROR_FROM", help_heading = "Replay")]
    pub from: Option<PathBuf>,
    /// Pace of --from replay: 0 = as fast as possible, 1 = recorded pace, 10 = ten times faster.
    #[arg(
        long,
        env = "MIRROR_SPEED",
        default_value_t = 0.0,
        help_heading = "Replay"
    )]
    pub speed: f64,
    /// Add or set a header on mirrored requests: 'Name: value' (repeatable; not split on ';',
    /// which header values may contain).
    #[arg(
        long = "mirror-header",
        env = "MIRROR_MIRROR_HEADERS",
        help_heading = "Replay"
    )]
    pub mirror_headers: Vec<String>,
    /// Remove a header from mirrored requests (repeatable).
    #[arg(
        long = "strip-header",
        env = "MIRROR_STRIP_HEADERS",
        value_delimiter = ',',
        help_heading = "Replay"
    )]
    pub strip_headers: Vec<String>,
    // Options below without a clap default are `Option` so that a value from the config file is
    // only overridden by a flag actually given; their defaults live in `config`.
    /// Host header: keep (the default), mirror (the mirror's authority), or suffix (append
    /// --host-suffix before the port).
    #[arg(long, env = "MIRROR_HOST_MODE", help_heading = "Replay")]
    pub host_mode: Option<String>,
    /// Suffix for --host-mode suffix [default: -shadow, as Envoy appends].
    #[arg(long, env = "MIRROR_HOST_SUFFIX", help_heading = "Replay")]
    pub host_suffix: Option<String>,
    /// Send bodies to mirrors [default: true] (false: no body, Content-Length: 0).
    #[arg(long, env = "MIRROR_MIRROR_BODY", action = clap::ArgAction::Set, help_heading = "Replay")]
    pub mirror_body: Option<bool>,
    /// Skip requests whose body is larger than this (counted).
    #[arg(long, env = "MIRROR_MAX_BODY_SIZE", help_heading = "Replay")]
    pub max_body_size: Option<u64>,
    /// Only mirror these methods (repeatable).
    #[arg(
        long = "method",
        env = "MIRROR_METHODS",
        value_delimiter = ',',
        help_heading = "Replay"
    )]
    pub methods: Vec<String>,
    /// Only mirror request targets matching this regex (repeatable: any matches).
    #[arg(
        long = "path-allow",
        env = "MIRROR_PATH_ALLOW",
        help_heading = "Replay"
    )]
    pub path_allow: Vec<String>,
    /// Never mirror request targets matching this regex (repeatable).
    #[arg(long = "path-deny", env = "MIRROR_PATH_DENY", help_heading = "Replay")]
    pub path_deny: Vec<String>,
    /// Only mirror requests with a header matching 'Name: regex' (repeatable: all must match).
    #[arg(
        long = "header-match",
        env = "MIRROR_HEADER_MATCH",
        help_heading = "Replay"
    )]
    pub header_match: Vec<String>,
    /// Per-mirror queue length [default: 4096]; a full queue drops the copy (counted).
    #[arg(long, env = "MIRROR_QUEUE_SIZE", help_heading = "Replay")]
    pub queue_size: Option<usize>,
    /// Per-mirror bound on queued request bytes [default: 67108864]; over it a copy is dropped
    /// (counted as queue full) unless the queue is empty.
    #[arg(long, env = "MIRROR_MAX_QUEUE_BYTES", help_heading = "Replay")]
    pub max_queue_bytes: Option<u64>,
    /// Per-mirror maximum connections [default: 32].
    #[arg(long, env = "MIRROR_MAX_CONNECTIONS", help_heading = "Replay")]
    pub max_connections: Option<usize>,
    /// Order of a client connection's copies at a mirror: connection (the default: in the
    /// client's order, the next one written after the previous one was answered, as on the
    /// primary) or none (copies of one connection may be in flight at once on several mirror
    /// connections: more throughput for a hot connection to a slow mirror, no ordering).
    #[arg(long, env = "MIRROR_ORDERING", help_heading = "Replay")]
    pub ordering: Option<String>,
    /// `independent` [default]: each mirror samples requests on its own; `consistent`: one
    /// decision value per request for all mirrors, so a mirror at P% gets a subset of what a
    /// mirror at Q% >= P% gets, and equal percents get the same requests.
    #[arg(long, env = "MIRROR_SAMPLING", help_heading = "Replay")]
    pub sampling: Option<String>,
    /// Per-request timeout to a mirror, in milliseconds [default: 5000]; opening a connection
    /// (TCP connect, TLS handshake) is bounded by half of it.
    #[arg(long, env = "MIRROR_TIMEOUT_MS", help_heading = "Replay")]
    pub timeout_ms: Option<u64>,
}

/// Primary-vs-mirror comparison.
#[derive(Debug, Args, Clone)]
pub struct CompareArgs {
    /// Compare each mirrored copy with the primary's answer: live capture also captures the
    /// primary's responses (egress), a pcap file pairs those it holds.
    #[arg(long, env = "MIRROR_COMPARE", help_heading = "Comparison")]
    pub compare: bool,
    /// How bodies are compared: auto (json when both sides say application/json, else exact),
    /// exact (decoded bytes and length), json (values, ignoring json: paths; not JSON on either
    /// side: exact), or off (headers only) [default: auto]. Headers and bodies are compared only
    /// when both statuses are equal; different Content-Encoding is a header mismatch and the
    /// bodies are then not compared.
    #[arg(long, env = "MIRROR_COMPARE_BODY", help_heading = "Comparison")]
    pub compare_body: Option<String>,
    /// Decoded body bytes kept per response on each side [default: 65536]; a longer body is
    /// compared on this prefix and counted as truncated.
    #[arg(long, env = "MIRROR_COMPARE_BODY_LIMIT", help_heading = "Comparison")]
    pub compare_body_limit: Option<usize>,
    /// Ignore in the comparison (repeatable): header:NAME, or json:PATH with PATH like
    /// $.a.b[*].c ([N] an element, [*] any element, .* any member; the node and all under it).
    /// Always ignored: date, server, age, expires, etag, last-modified, set-cookie,
    /// content-length, transfer-encoding, connection, keep-alive, x-request-id, traceparent,
    /// tracestate.
    #[arg(
        long = "compare-ignore",
        env = "MIRROR_COMPARE_IGNORE",
        value_delimiter = ',',
        help_heading = "Comparison"
    )]
    pub compare_ignore: Vec<String>,
    /// Write one JSON line per mismatching request to FILE (mode 0600): time, mirror, method,
    /// path, both statuses and latencies, kinds, differing headers, JSON paths, body excerpts.
    /// Credentials (Authorization, Cookie, stripped or ignored headers, token-like query
    /// parameters) are written as [redacted].
    #[arg(long, env = "MIRROR_DIFF_LOG", help_heading = "Comparison")]
    pub diff_log: Option<PathBuf>,
    /// Most --diff-log lines per second [default: 10]; lines over it are counted as
    /// diff_log_suppressed.
    #[arg(long, env = "MIRROR_DIFF_LOG_RATE", help_heading = "Comparison")]
    pub diff_log_rate: Option<u32>,
}

/// Files written besides the mirrors' copies.
#[derive(Debug, Args, Clone)]
pub struct OutputArgs {
    /// Write every request as a JSON line to FILE (`-` for stdout). Created with mode 0600;
    /// never through a symlink; an existing file only with --overwrite.
    #[arg(long, env = "MIRROR_RECORD", help_heading = "Output")]
    pub record: Option<String>,

    /// Write the segments captured live to a pcap file (for offline debugging). Created with
    /// mode 0600, like --record.
    #[arg(long, env = "MIRROR_WRITE_PCAP", help_heading = "Output")]
    pub write_pcap: Option<PathBuf>,

    /// Replace an existing regular file given to --record, --diff-log or --write-pcap (it keeps
    /// its owner and mode). Without it such a file is refused. FIFOs and character devices are
    /// written as they are.
    #[arg(long, env = "MIRROR_OVERWRITE", help_heading = "Output")]
    pub overwrite: bool,

    /// Memory for what --record and --write-pcap have not written yet, in bytes, each. They
    /// write on their own threads; when a sink falls this far behind, it drops whole items for
    /// itself only (counted: mirror.output.items.dropped), never capture or mirror copies.
    /// Larger is not better under sustained overload: the queue's churn through the allocator
    /// costs the capture thread (measured: 128 MiB lost ring records at 3 GB/s, 16 MiB none).
    #[arg(long, env = "MIRROR_OUTPUT_QUEUE_BYTES", default_value_t = 16 << 20, help_heading = "Output")]
    pub output_queue_bytes: u64,
}

/// Metrics and traces.
#[derive(Debug, Args, Clone)]
pub struct TelemetryArgs {
    /// Serve Prometheus metrics on HOST:PORT: /metrics, /healthz (alive) and /readyz (capture
    /// attached or source open).
    #[arg(long, env = "MIRROR_METRICS_ADDR", help_heading = "Telemetry")]
    pub metrics_addr: Option<String>,
    /// Export metrics and mirror spans with OTLP to this base URL (e.g. http://collector:4318;
    /// http/protobuf appends /v1/metrics and /v1/traces). Without it OTLP is on when
    /// OTEL_EXPORTER_OTLP_ENDPOINT (or a per-signal endpoint) is set; the other OTEL_* variables
    /// (OTEL_METRIC_EXPORT_INTERVAL, OTEL_SERVICE_NAME, OTEL_EXPORTER_OTLP_HEADERS,
    /// OTEL_RESOURCE_ATTRIBUTES, OTEL_SDK_DISABLED, OTEL_TRACES_EXPORTER=none) apply.
    #[arg(long, help_heading = "Telemetry")]
    pub otlp_endpoint: Option<String>,
    /// OTLP protocol: grpc or http/protobuf [default: http/protobuf, as the specification].
    #[arg(long, env = "OTEL_EXPORTER_OTLP_PROTOCOL", help_heading = "Telemetry")]
    pub otlp_protocol: Option<String>,
    /// What a mirror receives as W3C `traceparent` when the client sent one: rewrite (a child
    /// of the mirror span, the default), keep (the client's), or strip (with tracestate).
    #[arg(long, env = "MIRROR_OTLP_TRACEPARENT", help_heading = "Telemetry")]
    pub otlp_traceparent: Option<String>,
}

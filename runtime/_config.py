"""Runtime configuration: one frozen object built from flags and `MESHTAP_*` environment variables.

Every option has a flag and an environment variable (flag wins). The table in README.md is
generated from `OPTIONS`, so documentation cannot drift from the code.
"""

from __future__ import annotations

import argparse
import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class RuntimeConfig:
    host: str = "127.0.0.1"
    http_port: int = 10105
    grpc_port: int = 10205
    store: str = "memory://"
    max_payload_bytes: int = 1_048_576
    drain_timeout_s: float = 30.0
    claim_idle_ms: int = 30_000
    max_in_flight: int = 256
    retention_s: float = 3600.0
    capture: str = "none"
    capture_spool_dir: str = "var/spool"
    redact_fields: tuple[str, ...] = ()
    redact_extensions: tuple[str, ...] = ()
    redaction_key: str = ""
    capture_max_buffered: int = 1_000_000
    span_sample_ratio: float = 1.0
    otlp_export: str = ""
    otlp_http_port: int = 4318
    otlp_grpc_port: int = 4317
    webhook_topics: Mapping[str, str] = field(default_factory=dict)
    """`/webhook/{name}` publishes to `webhook_topics[name]`, default `webhook.{name}`."""
    instance: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    mesh_name: str = ""
    """Empty: the instance name (unique, so never mistaken for another mesh)."""
    bridges: tuple[str, ...] = ()
    """`--bridge` specs (`PATTERN=>TARGET[;key=value...]`), applied at every start."""
    log_level: str = "INFO"
    auth_tokens: str = ""
    jwt_secret: str = ""
    jwt_public_key: str = ""
    allow_anonymous: bool = False
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    rate_limit: float = 0.0
    rate_burst: float = 0.0
    sink_ca_bundle: str = ""
    webhook_signing_key: str = ""
    sink_blocked_networks: tuple[str, ...] = ()
    sink_allowed_networks: tuple[str, ...] = ()


def parse_bool(raw: str) -> bool:
    """An environment variable's truth value (true/false, yes/no, on/off, 1/0)."""
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(raw)


parse_bool.__name__ = "boolean (true/false)"


@dataclass(frozen=True, slots=True)
class Option:
    flag: str
    field: str
    help: str
    type: Any = str
    metavar: str | None = None
    repeatable: bool = False
    """Given several times (or comma-separated in the environment variable)."""

    @property
    def env(self) -> str:
        return "MESHTAP_" + self.field.upper()


OPTIONS: tuple[Option, ...] = (
    Option("--host", "host", "interface the HTTP and gRPC APIs listen on"),
    Option("--http-port", "http_port", "HTTP API port (EventMesh's default)", int),
    Option(
        "--grpc-port",
        "grpc_port",
        "EventMesh-compatible gRPC API port (PublisherService, ConsumerService, "
        "HeartbeatService; EventMesh's default); 0 = off",
        int,
    ),
    Option(
        "--store",
        "store",
        "where events, subscriptions and topics live: memory://, redis://host:port/db (Redis "
        "Streams) or nats://host:4222 (NATS JetStream)",
    ),
    Option(
        "--max-payload-bytes",
        "max_payload_bytes",
        "largest request body accepted (larger ones get 413)",
        int,
    ),
    Option(
        "--drain-timeout",
        "drain_timeout_s",
        "on SIGTERM, seconds to wait for in-flight deliveries",
        float,
        "SECONDS",
    ),
    Option(
        "--claim-idle-ms",
        "claim_idle_ms",
        "an event pending this long without its holder renewing it is taken over by another "
        "instance (crash recovery)",
        int,
    ),
    Option("--max-in-flight", "max_in_flight", "concurrent pushes per consumer group", int),
    Option(
        "--retention",
        "retention_s",
        "seconds settled events stay in the store (at least 60; events a group still needs are "
        "never dropped, and the capture store keeps history)",
        float,
        "SECONDS",
    ),
    Option(
        "--capture",
        "capture",
        "record every event flow: chdb:///PATH (in-process ClickHouse), "
        "clickhouse://HOST:9000/meshtap, or none",
    ),
    Option(
        "--capture-spool-dir",
        "capture_spool_dir",
        "where capture batches wait while ClickHouse is unreachable",
    ),
    Option(
        "--capture-max-buffered",
        "capture_max_buffered",
        "hard bound on capture rows held in memory and spool; beyond it rows are dropped "
        "(counted in meshtap_capture_dropped_rows_total)",
        int,
    ),
    Option(
        "--span-sample-ratio",
        "span_sample_ratio",
        "share of traces whose runtime spans are kept (events and deliveries are always captured)",
        float,
    ),
    Option(
        "--otlp-export",
        "otlp_export",
        "also send the runtime's spans to this OTLP/HTTP endpoint, e.g. http://tempo:4318",
        str,
        "URL",
    ),
    Option(
        "--redact-field",
        "redact_fields",
        "data field path masked before capture, e.g. card.number or items.*.iban (repeatable)",
        str,
        "PATH",
        True,
    ),
    Option(
        "--redact-extension",
        "redact_extensions",
        "CloudEvents extension masked before capture, e.g. authorization (repeatable)",
        str,
        "NAME",
        True,
    ),
    Option(
        "--redaction-key",
        "redaction_key",
        "secret key of the hash that replaces masked values (equal values stay joinable)",
    ),
    Option(
        "--otlp-http-port",
        "otlp_http_port",
        "port of the OTLP/HTTP receiver (POST /v1/traces, protobuf or JSON) that puts "
        "applications' own spans into the capture store; 0 = off (also off with --capture none)",
        int,
    ),
    Option(
        "--otlp-grpc-port",
        "otlp_grpc_port",
        "port of the OTLP/gRPC receiver (TraceService/Export) that puts applications' own spans "
        "into the capture store; 0 = off (also off with --capture none)",
        int,
    ),
    Option(
        "--webhook-topic",
        "webhook_topics",
        "route the HTTP source /webhook/NAME to TOPIC (repeatable; default topic webhook.NAME)",
        str,
        "NAME=TOPIC",
        True,
    ),
    Option("--instance", "instance", "name of this runtime instance (consumer name in the store)"),
    Option(
        "--mesh-name",
        "mesh_name",
        "name of this mesh, listed in the meshpath extension of events its bridges forward so "
        "they never come back; give every instance of one mesh the same name",
    ),
    Option(
        "--bridge",
        "bridges",
        "forward topics matching PATTERN to another mesh's HTTP (http://HOST:PORT) or gRPC "
        "(grpc://HOST:PORT) API, optionally ;name=N;prefix=P.;strip=S.;max_hops=N;max_attempts=N;"
        "timeout_ms=N (repeatable; kept in the store like POST /v1/bridges)",
        str,
        "'PATTERN=>TARGET'",
        True,
    ),
    Option("--log-level", "log_level", "DEBUG, INFO, WARNING or ERROR"),
    Option(
        "--auth-tokens",
        "auth_tokens",
        "turn authentication on with this tokens file (salted hashes only; create clients with "
        "`python -m runtime tokens add NAME --publish 'orders.#'`)",
        str,
        "FILE",
    ),
    Option(
        "--jwt-secret",
        "jwt_secret",
        "also accept HS256 JWTs signed with this secret (claims sub, exp, publish, subscribe, "
        "replay); turns authentication on",
    ),
    Option(
        "--jwt-public-key",
        "jwt_public_key",
        "also accept RS256 JWTs verified with this PEM public key; turns authentication on",
        str,
        "FILE",
    ),
    Option(
        "--allow-anonymous",
        "allow_anonymous",
        "serve requests without credentials (full rights). Without authentication this is "
        "implied on a loopback --host; any other host refuses to start unless it is set",
        parse_bool,
    ),
    Option(
        "--tls-cert",
        "tls_cert",
        "serve HTTP and gRPC over TLS with this PEM certificate chain",
        str,
        "FILE",
    ),
    Option("--tls-key", "tls_key", "the PEM private key of --tls-cert", str, "FILE"),
    Option(
        "--tls-client-ca",
        "tls_client_ca",
        "require client certificates signed by this CA (mTLS); a certificate's CN names its "
        "client in the tokens file. Turns authentication on",
        str,
        "FILE",
    ),
    Option(
        "--rate-limit",
        "rate_limit",
        "requests per second per client (token bucket; over it: 429 with Retry-After, gRPC "
        "RESOURCE_EXHAUSTED); 0 = off",
        float,
    ),
    Option("--rate-burst", "rate_burst", "bucket size of --rate-limit (0 = the rate)", float),
    Option(
        "--sink-ca-bundle",
        "sink_ca_bundle",
        "extra CA certificates (PEM) trusted when pushing to https:// sinks; sinks are always "
        "verified",
        str,
        "FILE",
    ),
    Option(
        "--webhook-signing-key",
        "webhook_signing_key",
        "sign every webhook push with HMAC-SHA256 (header Meshtap-Signature: t=...,v1=...)",
    ),
    Option(
        "--sink-block",
        "sink_blocked_networks",
        "refuse sinks and bridge targets in this network, besides the built-in blocks "
        "(loopback, link-local, metadata, multicast, unspecified) (repeatable)",
        str,
        "CIDR",
        True,
    ),
    Option(
        "--sink-allow",
        "sink_allowed_networks",
        "allow sinks in this network even if blocked, e.g. 127.0.0.0/8 (repeatable; loopback "
        "is allowed when --host is loopback)",
        str,
        "CIDR",
        True,
    ),
)


def _parse_routes(values: Sequence[str]) -> dict[str, str]:
    routes = {}
    for value in values:
        for item in value.split(","):
            name, sep, topic = item.partition("=")
            if not sep or not name.strip() or not topic.strip():
                raise argparse.ArgumentTypeError(
                    f"--webhook-topic expects NAME=TOPIC (e.g. github=scm.github), got {item!r}"
                )
            routes[name.strip()] = topic.strip()
    return routes


def _shown_default(option: Option, defaults: RuntimeConfig) -> object:
    """The default as documented (computed defaults are shown by what they are made of)."""
    if option.field == "webhook_topics":
        return "webhook.NAME"
    if option.field in ("instance", "mesh_name"):
        return "HOSTNAME-PID"
    if option.repeatable:
        return "none"
    return getattr(defaults, option.field)


def build_parser() -> argparse.ArgumentParser:
    defaults = RuntimeConfig()
    parser = argparse.ArgumentParser(
        prog="python -m runtime",
        description="Run a Meshtap runtime: CloudEvents pub/sub over HTTP.",
        epilog="Every flag can also be set with the MESHTAP_* environment variable shown. API "
        "clients (tokens) are managed with `python -m runtime tokens --help`.",
    )
    for option in OPTIONS:
        shown = _shown_default(option, defaults)
        kwargs: dict[str, Any] = {
            "dest": option.field,
            "metavar": option.metavar,
            "help": f"{option.help} [env {option.env}, default {shown}]",
        }
        if option.repeatable:
            kwargs["action"] = "append"
        elif option.type is parse_bool:
            kwargs["action"] = "store_const"
            kwargs["const"] = True
            kwargs.pop("metavar")
        else:
            kwargs["type"] = option.type
        parser.add_argument(option.flag, **kwargs)
    return parser


def config_from_args(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> RuntimeConfig:
    """Flags first, then `MESHTAP_*` variables, then defaults."""
    environ = os.environ if environ is None else environ
    parser = build_parser()
    args = parser.parse_args(argv)
    values: dict[str, Any] = {}
    for option in OPTIONS:
        value = getattr(args, option.field)
        if value is None and option.env in environ:
            raw = environ[option.env]
            try:
                value = raw.split(",") if option.repeatable else option.type(raw)
            except ValueError:
                parser.error(f"{option.env}={raw!r} is not a valid {option.type.__name__}")
        if value is None:
            continue
        if option.field == "webhook_topics":
            try:
                value = _parse_routes(value)
            except argparse.ArgumentTypeError as e:
                parser.error(str(e))
        elif option.repeatable:
            value = tuple(v.strip() for item in value for v in item.split(",") if v.strip())
        values[option.field] = value
    if values.get("retention_s", 60) < 60:
        parser.error(
            f"--retention must be at least 60 seconds (got {values['retention_s']:g}): "
            "subscribers joining a new topic need that long to see its first events"
        )
    _check_bridges(parser, values)
    return RuntimeConfig(**values)


def _check_bridges(parser: argparse.ArgumentParser, values: Mapping[str, Any]) -> None:
    """Refuse a bad --bridge or --mesh-name before anything starts."""
    from runtime._bridges import parse_bridge_flag, validate_mesh_name  # late: a small cycle
    from runtime._errors import InvalidBridge

    try:
        if values.get("mesh_name"):
            validate_mesh_name(values["mesh_name"])
        for spec in values.get("bridges", ()):
            parse_bridge_flag(spec)
    except InvalidBridge as e:
        parser.error(str(e))


def options_markdown() -> str:
    """The configuration table of README.md (kept in sync by a test)."""
    defaults = RuntimeConfig()
    lines = ["| flag | environment variable | default | what it does |", "|---|---|---|---|"]
    for option in OPTIONS:
        default = _shown_default(option, defaults)
        flag = f"{option.flag} {option.metavar}" if option.metavar else option.flag
        lines.append(f"| `{flag}` | `{option.env}` | `{default}` | {option.help} |")
    return "\n".join(lines)

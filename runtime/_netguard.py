"""Outbound safety: which addresses sinks (and bridge targets) may point at, TLS trust for
pushes, and the HMAC signature that lets a subscriber check a push came from this mesh.

SSRF guard. Whoever may subscribe chooses a URL the runtime will POST to, from inside the
network. So sinks are refused when they point at loopback, link-local (cloud metadata lives
there), metadata host names, multicast or unspecified addresses, plus any `--sink-block`
network; `--sink-allow` exempts networks (loopback is exempt when the runtime itself listens on
loopback: the embedded default, where sinks are local test services). IP literals are checked
when the subscription is made; host names again each time they are resolved (a name can be
re-pointed after the check: DNS rebinding), by the resolver of the push client.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import socket
import ssl
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from aiohttp.resolver import ThreadedResolver

from runtime._auth import is_loopback_host
from runtime._config import RuntimeConfig
from runtime._errors import InsecureSetup, InvalidSubscription

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

BUILT_IN_BLOCKS: tuple[str, ...] = (
    "127.0.0.0/8",  # loopback
    "::1/128",
    "0.0.0.0/8",  # "this host"
    "::/128",
    "169.254.0.0/16",  # link-local: AWS/GCP/Azure metadata at 169.254.169.254
    "fe80::/10",
    "fd00:ec2::254/128",  # AWS IPv6 metadata
    "100.100.100.200/32",  # Alibaba Cloud metadata
    "224.0.0.0/4",  # multicast
    "ff00::/8",
)
LOOPBACK: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
SIGNATURE_HEADER = "Meshtap-Signature"


def _networks(values: Iterable[str], flag: str) -> tuple[Network, ...]:
    found = []
    for value in values:
        try:
            found.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            raise InsecureSetup(
                f"{flag} {value!r} is not a network; use CIDR notation such as 10.0.0.0/8"
            ) from None
    return tuple(found)


@dataclass(frozen=True, slots=True)
class SinkPolicy:
    """Blocked and exempted networks for outbound pushes."""

    blocked: tuple[Network, ...]
    allowed: tuple[Network, ...] = ()

    def reason(self, host: str) -> str | None:
        """Why `host` (an IP literal) is refused, or None (also None for host names)."""
        try:
            address = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            return None
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        if any(address in network for network in self.allowed):
            return None
        for network in self.blocked:
            if address in network:
                return (
                    f"{address} is in the blocked network {network} (sinks may not reach the "
                    "runtime's own host, link-local/metadata or other blocked addresses); if "
                    f"this is intended, start the runtime with --sink-allow {network}"
                )
        return None

    def check_url(self, url: str) -> None:
        """Raise InvalidSubscription when the URL's host is an address we refuse: webhook sinks
        (http, https) and bridge targets (those and grpc)."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https", "grpc") or not parts.hostname:
            return
        reason = self.reason(parts.hostname)
        if reason:
            raise InvalidSubscription(f"sink {url!r} is refused: {reason}")


def sink_policy(config: RuntimeConfig) -> SinkPolicy:
    allowed = list(config.sink_allowed_networks)
    if is_loopback_host(config.host):
        allowed.extend(LOOPBACK)
    return SinkPolicy(
        _networks((*BUILT_IN_BLOCKS, *config.sink_blocked_networks), "--sink-block"),
        _networks(allowed, "--sink-allow"),
    )


class GuardedResolver(ThreadedResolver):
    """Resolves sink host names and drops addresses the policy refuses (DNS rebinding)."""

    def __init__(self, policy: SinkPolicy) -> None:
        super().__init__()
        self._policy = policy

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[Any]:
        infos = await super().resolve(host, port, family)
        kept = [info for info in infos if self._policy.reason(str(info["host"])) is None]
        if not kept:
            reason = self._policy.reason(str(infos[0]["host"])) if infos else "no address"
            raise OSError(f"sink host {host!r} resolves to a refused address: {reason}")
        return kept


def sink_ssl_context(config: RuntimeConfig) -> ssl.SSLContext:
    """Pushes to https:// sinks always verify the certificate: system CAs plus the bundle."""
    context = ssl.create_default_context()
    if config.sink_ca_bundle:
        try:
            context.load_verify_locations(cafile=config.sink_ca_bundle)
        except (OSError, ssl.SSLError) as e:
            raise InsecureSetup(
                f"--sink-ca-bundle {config.sink_ca_bundle!r} cannot be loaded: {e}"
            ) from None
    return context


# --------------------------------------------------------------------------------------------
# Push signatures
# --------------------------------------------------------------------------------------------


def sign_push(key: str, body: bytes, timestamp: int | None = None) -> str:
    """The `Meshtap-Signature` header value: ``t=<unix seconds>,v1=<hex HMAC-SHA256>``.

    The MAC covers ``"<t>." + body``, so a captured push cannot be replayed later with a fresh
    timestamp; subscribers reject signatures older than a few minutes.
    """
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(key.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def verify_push_signature(
    key: str, header: str, body: bytes, *, tolerance_s: float = 300.0, now: float | None = None
) -> bool:
    """What a subscriber runs on each push: True when `header` signs `body` with `key` and is
    at most `tolerance_s` old. Constant-time comparison."""
    fields = dict(item.partition("=")[::2] for item in header.split(","))
    try:
        t = int(fields.get("t", ""))
    except ValueError:
        return False
    current = time.time() if now is None else now
    if abs(current - t) > tolerance_s:
        return False
    expected = sign_push(key, body, t).partition(",v1=")[2]
    return hmac.compare_digest(expected, fields.get("v1", ""))

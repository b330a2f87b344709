"""Who is calling (authentication) and what they may do (authorisation), for every protocol.

Credentials, in the order they are tried:

* an API token ``mtk_<id>_<secret>`` (``Authorization: Bearer ...``, or EventMesh's ``token``
  header). The tokens file keeps only a random salt and ``sha256(salt + secret)`` per client:
  a secret is 256 random bits, so a fast hash is enough (slow hashes protect guessable
  passwords; nothing here is guessable) and a stolen file grants nothing;
* a JWT (HS256 with ``--jwt-secret``, RS256 with ``--jwt-public-key``), whose ``sub`` names the
  client and whose ``publish``/``subscribe``/``replay`` claims carry its rights; ``exp`` is
  required so a leaked JWT does not live forever;
* a TLS client certificate (mTLS, ``--tls-client-ca``) whose common name is a client in the
  tokens file: that client's rights apply.

Rights are topic patterns (the subscription syntax, `runtime._topics`). Publishing an event
that carries the ``replayid`` extension needs the separate ``replay`` right: replayed traffic is
marked as such downstream, and only replay jobs should be able to produce it.

The principal of the current request lives in a context variable set by the protocol layer, so
`Mesh` checks rights in one place for the native HTTP API, the EventMesh endpoints, gRPC and
whatever is added later. No principal (``None``) means the runtime itself is calling.
"""

from __future__ import annotations

import contextvars
import dataclasses
import hashlib
import hmac
import ipaddress
import json
import logging
import math
import os
import secrets
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt

from runtime._config import RuntimeConfig
from runtime._errors import (
    Forbidden,
    InsecureSetup,
    InvalidRequest,
    RateLimited,
    Unauthenticated,
)
from runtime._events import CloudEvent
from runtime._topics import ANY_SEGMENTS, ONE_SEGMENT, validate_pattern

log = logging.getLogger("meshtap.runtime.auth")

TOKEN_PREFIX = "mtk_"
REPLAY_EXTENSION = "replayid"
RIGHTS = ("publish", "subscribe", "replay")


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated client and its rights (topic patterns per right)."""

    name: str
    publish: tuple[str, ...] = ()
    subscribe: tuple[str, ...] = ()
    replay: tuple[str, ...] = ()
    admin: bool = False
    """May delete topics and see or remove every subscription."""
    method: str = "token"
    """How it proved who it is: token, jwt, mtls or anonymous (logged with every denial)."""

    def patterns(self, right: str) -> tuple[str, ...]:
        found: tuple[str, ...] = getattr(self, right)
        return found


ANONYMOUS = Principal(
    "anonymous", ("#",), ("#",), ("#",), admin=True, method="anonymous"
)  # only when anonymous access is allowed (loopback by default, or --allow-anonymous)

current_principal: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "meshtap_principal", default=None
)


# --------------------------------------------------------------------------------------------
# Patterns: does a granted pattern cover a topic, or every topic of a requested pattern?
# --------------------------------------------------------------------------------------------


def _covers(grant: Sequence[str], wanted: Sequence[str]) -> bool:
    """Whether every topic `wanted` (tokens of a topic or pattern) can match lies under `grant`.

    A granted ``#`` covers any run of tokens (wildcards included); a granted ``*`` covers one
    literal or ``*`` token but not ``#`` (which may stand for several segments); a literal
    covers only itself. Dynamic programming over both token lists: patterns are user input.
    """
    n, m = len(grant), len(wanted)
    ok = [[False] * (m + 1) for _ in range(n + 1)]
    ok[n][m] = True
    for i in range(n - 1, -1, -1):
        for j in range(m, -1, -1):
            token = grant[i]
            if token == ANY_SEGMENTS:
                ok[i][j] = ok[i + 1][j] or (j < m and ok[i][j + 1])
            elif j < m:
                here = wanted[j]
                if token == ONE_SEGMENT:
                    ok[i][j] = here != ANY_SEGMENTS and ok[i + 1][j + 1]
                else:
                    ok[i][j] = here == token and ok[i + 1][j + 1]
    return ok[0][0]


def pattern_allows(grant: str, wanted: str) -> bool:
    """Whether the right `grant` covers the topic or pattern `wanted` (both already valid).

    Internal topics (``_...``) are covered only by a grant that names them literally: ``#``
    and ``*`` never reach them, as for subscriptions.
    """
    if wanted.startswith("_") and not grant.startswith("_"):
        return False
    return _covers(grant.split("."), wanted.split("."))


# --------------------------------------------------------------------------------------------
# Rate limits
# --------------------------------------------------------------------------------------------


class TokenBuckets:
    """One token bucket per client: `rate` requests per second, bursts of up to `burst`."""

    def __init__(self, rate: float, burst: float, *, max_clients: int = 100_000) -> None:
        self.rate = rate
        self.burst = max(burst, 1.0)
        self._max_clients = max_clients
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, client: str, now: float | None = None) -> None:
        """Spend one request of `client`'s budget, or raise RateLimited with the wait."""
        if self.rate <= 0:
            return
        now = time.monotonic() if now is None else now
        tokens, last = self._buckets.get(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens < 1.0:
            wait = (1.0 - tokens) / self.rate
            self._buckets[client] = (tokens, now)
            raise RateLimited(
                f"client {client!r} is over its rate limit of {self.rate:g} requests/s "
                f"(bursts of {self.burst:g}); retry after {wait:.2f} s, or ask the operator to "
                "raise --rate-limit (MESHTAP_RATE_LIMIT)",
                retry_after_s=max(1, math.ceil(wait)),
            )
        if len(self._buckets) >= self._max_clients and client not in self._buckets:
            self._buckets.clear()  # bounded memory: anonymous clients are keyed by address
        self._buckets[client] = (tokens - 1.0, now)


# --------------------------------------------------------------------------------------------
# The tokens file
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """One client in the tokens file: its rights and the salted hash of its secret."""

    name: str
    key_id: str
    salt: str
    hash: str
    publish: tuple[str, ...] = ()
    subscribe: tuple[str, ...] = ()
    replay: tuple[str, ...] = ()
    admin: bool = False
    created: str = ""

    def principal(self, method: str) -> Principal:
        return Principal(
            self.name, self.publish, self.subscribe, self.replay, self.admin, method=method
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "key_id": self.key_id,
            "salt": self.salt,
            "hash": self.hash,
            "publish": list(self.publish),
            "subscribe": list(self.subscribe),
            "replay": list(self.replay),
            "admin": self.admin,
            "created": self.created,
        }


def _digest(salt: str, secret: str) -> str:
    return hashlib.sha256(bytes.fromhex(salt) + secret.encode()).hexdigest()


def _patterns(values: Iterable[str], right: str) -> tuple[str, ...]:
    found = []
    for value in values:
        for item in str(value).replace(",", " ").split():
            try:
                found.append(validate_pattern(item))
            except InvalidRequest as e:
                raise InvalidRequest(f"{right} right {item!r}: {e}") from None
    return tuple(found)


class TokenFile:
    """The JSON file of API clients. Writes are atomic (temp file + rename), mode 0600."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def load(self) -> dict[str, TokenRecord]:
        if not self.path.exists():
            return {}
        try:
            raw = json.loads(self.path.read_text())
            records = {}
            for item in raw["clients"]:
                record = TokenRecord(
                    name=item["name"],
                    key_id=item["key_id"],
                    salt=item["salt"],
                    hash=item["hash"],
                    publish=_patterns(item.get("publish", ()), "publish"),
                    subscribe=_patterns(item.get("subscribe", ()), "subscribe"),
                    replay=_patterns(item.get("replay", ()), "replay"),
                    admin=bool(item.get("admin", False)),
                    created=str(item.get("created", "")),
                )
                records[record.name] = record
        except (ValueError, KeyError, TypeError) as e:
            raise InvalidRequest(
                f"tokens file {str(self.path)!r} is not a Meshtap tokens file ({type(e).__name__}: "
                f"{e}); create it with `python -m runtime tokens add NAME --file {self.path}`"
            ) from None
        return records

    def save(self, records: Mapping[str, TokenRecord]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        body = json.dumps(
            {"version": 1, "clients": [r.to_json() for r in records.values()]}, indent=2
        )
        temp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(body + "\n")
        temp.replace(self.path)

    def add(
        self,
        name: str,
        *,
        publish: Iterable[str] = (),
        subscribe: Iterable[str] = (),
        replay: Iterable[str] = (),
        admin: bool = False,
    ) -> str:
        """Create (or replace) client `name`; returns its token, which is stored nowhere."""
        if not name or not name.isprintable() or any(c.isspace() for c in name):
            raise InvalidRequest(
                f"client name {name!r} must be printable without spaces, e.g. billing-service"
            )
        records = self.load()
        key_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        salt = secrets.token_hex(16)
        records[name] = TokenRecord(
            name=name,
            key_id=key_id,
            salt=salt,
            hash=_digest(salt, secret),
            publish=_patterns(publish, "publish"),
            subscribe=_patterns(subscribe, "subscribe"),
            replay=_patterns(replay, "replay"),
            admin=admin,
            created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        )
        self.save(records)
        return f"{TOKEN_PREFIX}{key_id}_{secret}"

    def remove(self, name: str) -> bool:
        records = self.load()
        if records.pop(name, None) is None:
            return False
        self.save(records)
        return True


# --------------------------------------------------------------------------------------------
# Authentication
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuthSettings:
    """What the protocol layers need to authenticate; built from `RuntimeConfig`."""

    tokens_file: str = ""
    jwt_secret: str = ""
    jwt_public_key: str = ""
    """Path of a PEM public key (RS256)."""
    mtls: bool = False
    allow_anonymous: bool = True
    rate_limit: float = 0.0
    rate_burst: float = 0.0
    open_paths: frozenset[str] = field(default_factory=lambda: frozenset({"/healthz", "/readyz"}))

    @property
    def enabled(self) -> bool:
        return bool(self.tokens_file or self.jwt_secret or self.jwt_public_key or self.mtls)


def is_loopback_host(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def auth_settings(config: RuntimeConfig) -> AuthSettings:
    """Authentication as configured. Without any credential source, anonymous access is
    implied on a loopback host only (`check_exposure` refuses the rest)."""
    settings = AuthSettings(
        tokens_file=config.auth_tokens,
        jwt_secret=config.jwt_secret,
        jwt_public_key=config.jwt_public_key,
        mtls=bool(config.tls_client_ca),
        rate_limit=config.rate_limit,
        rate_burst=config.rate_burst,
    )
    anonymous = config.allow_anonymous or (not settings.enabled and is_loopback_host(config.host))
    return dataclasses.replace(settings, allow_anonymous=anonymous)


def check_exposure(config: RuntimeConfig) -> None:
    """Refuse to serve an open mesh on a non-loopback interface unless told to."""
    settings = auth_settings(config)
    if settings.enabled or settings.allow_anonymous:
        return
    raise InsecureSetup(
        f"refusing to listen on {config.host} without authentication: anyone who can reach it "
        "could publish, subscribe and replay. Turn authentication on with --auth-tokens FILE "
        "(MESHTAP_AUTH_TOKENS; create clients with `python -m runtime tokens add NAME "
        "--publish 'orders.#' --file FILE`), or accept open access with --allow-anonymous "
        "(MESHTAP_ALLOW_ANONYMOUS=true), or listen on 127.0.0.1"
    )


def _claim_patterns(claims: Mapping[str, Any], right: str) -> tuple[str, ...]:
    value = claims.get(right, [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise Unauthenticated(f"JWT claim {right!r} must be a list of topic patterns")
    try:
        return _patterns(value, right)
    except InvalidRequest as e:
        raise Unauthenticated(f"JWT claim: {e}") from None


class Authenticator:
    """Turns the credentials of one request into a `Principal`, or raises Unauthenticated."""

    def __init__(self, settings: AuthSettings) -> None:
        self.settings = settings
        self._records: dict[str, TokenRecord] = {}
        self._by_key: dict[str, TokenRecord] = {}
        self._jwt_key: str | bytes = ""
        self._jwt_algorithms: list[str] = []
        if settings.tokens_file:
            self._records = TokenFile(settings.tokens_file).load()
            self._by_key = {r.key_id: r for r in self._records.values()}
        if settings.jwt_secret:
            self._jwt_key, self._jwt_algorithms = settings.jwt_secret, ["HS256"]
        elif settings.jwt_public_key:
            try:
                self._jwt_key = Path(settings.jwt_public_key).read_bytes()
            except OSError as e:
                raise InvalidRequest(
                    f"--jwt-public-key {settings.jwt_public_key!r} cannot be read: {e.strerror}"
                ) from None
            self._jwt_algorithms = ["RS256"]
        self.rate = TokenBuckets(settings.rate_limit, settings.rate_burst or settings.rate_limit)

    @property
    def enabled(self) -> bool:
        return self.settings.enabled

    def authenticate(
        self, *, credential: str | None, cert_name: str | None, remote: str
    ) -> Principal:
        """The caller, from a bearer credential or a verified client certificate's name."""
        if not self.enabled:
            return ANONYMOUS  # credentials meant for others (EventMesh's token header) are ignored
        if credential:
            if credential.startswith(TOKEN_PREFIX):
                return self._token(credential)
            if self._jwt_algorithms:
                return self._jwt(credential)
            raise Unauthenticated(
                "the credential is not a Meshtap API token (they start with 'mtk_') and JWTs "
                "are not accepted here (no --jwt-secret or --jwt-public-key)"
            )
        if cert_name is not None and self.settings.mtls:
            record = self._records.get(cert_name)
            if record is None:
                raise Unauthenticated(
                    f"client certificate CN={cert_name!r} is not a client in the tokens file; "
                    f"add it with `python -m runtime tokens add {cert_name} ...`"
                )
            return record.principal("mtls")
        if self.settings.allow_anonymous:
            return ANONYMOUS
        raise Unauthenticated(
            "no credentials: send 'Authorization: Bearer <token>' (an API token from "
            "`python -m runtime tokens add` or a JWT)"
            + (", or a client certificate" if self.settings.mtls else "")
        )

    def _token(self, token: str) -> Principal:
        key_id, _, secret = token[len(TOKEN_PREFIX) :].partition("_")
        record = self._by_key.get(key_id)
        if record is None or not hmac.compare_digest(record.hash, _digest(record.salt, secret)):
            # Never echo the token: the message names only its public key id.
            raise Unauthenticated(
                f"API token with key id {key_id[:12]!r} is unknown or wrong; create one with "
                "`python -m runtime tokens add NAME ...`"
            )
        return record.principal("token")

    def _jwt(self, token: str) -> Principal:
        try:
            claims = jwt.decode(
                token,
                self._jwt_key,
                algorithms=self._jwt_algorithms,
                options={"require": ["exp", "sub"]},
            )
        except jwt.PyJWTError as e:
            raise Unauthenticated(
                f"JWT refused: {e} (expected {'/'.join(self._jwt_algorithms)} with 'sub' and "
                "'exp' claims)"
            ) from None
        return Principal(
            str(claims["sub"]),
            _claim_patterns(claims, "publish"),
            _claim_patterns(claims, "subscribe"),
            _claim_patterns(claims, "replay"),
            admin=claims.get("admin") is True,
            method="jwt",
        )


def bearer(authorization: str | None, token_header: str | None = None) -> str | None:
    """The credential of `Authorization: Bearer X` (or EventMesh's `token` header).

    Other schemes (Basic, GitHub's `token ...`) are someone else's credentials, e.g. on the
    HTTP source `/webhook/{name}`: they are not ours to check, so they count as none.
    """
    if authorization:
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return token_header.strip() if token_header and token_header.strip() else None


# --------------------------------------------------------------------------------------------
# Authorisation
# --------------------------------------------------------------------------------------------


def _grant_hint(right: str, wanted: str) -> str:
    return f"ask for a token with --{right} '{wanted}'"


def require(right: str, wanted: str) -> None:
    """Raise Forbidden unless the current principal holds `right` on topic/pattern `wanted`."""
    principal = current_principal.get()
    if principal is None or principal.method == "anonymous":
        return  # the runtime itself, or open access (everything, as without authentication)
    if any(pattern_allows(grant, wanted) for grant in principal.patterns(right)):
        return
    held = ", ".join(principal.patterns(right)) or "none"
    raise Forbidden(
        f"client {principal.name!r} may not {right} {wanted!r} (its {right} rights: {held}); "
        + _grant_hint(right, wanted)
    )


def require_admin(action: str) -> None:
    principal = current_principal.get()
    if principal is None or principal.admin:
        return
    raise Forbidden(
        f"client {principal.name!r} may not {action}: that needs an admin client "
        "(`python -m runtime tokens add NAME --admin`)"
    )


def require_publish(topic: str, events: Sequence[CloudEvent]) -> None:
    """Publishing needs `publish`; events carrying `replayid` need `replay` instead."""
    principal = current_principal.get()
    if principal is None or principal.method == "anonymous":
        return
    replayed = any(REPLAY_EXTENSION in e.attributes for e in events)
    plain = any(REPLAY_EXTENSION not in e.attributes for e in events)
    if replayed:
        require("replay", topic)
    if plain:
        require("publish", topic)

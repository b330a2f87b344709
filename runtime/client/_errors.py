"""Errors the client SDK raises. Every one carries the runtime's message, which says what to do::

MeshClientError                  anything the SDK raises on purpose (`.code`: gRPC status name)
├── InvalidArgument              the runtime refused the request (bad event, topic, group ...)
├── NotFound                     nothing to act on (e.g. unsubscribe of an unknown subscription)
├── AuthenticationFailed         no or wrong token (gRPC UNAUTHENTICATED, HTTP 401)
├── PermissionDenied             the token lacks the right for this topic (403)
├── TooLarge                     over the runtime's --max-payload-bytes
├── Unavailable                  the runtime or its store cannot be reached (after retries)
├── RequestTimeout               request-reply: no reply within the timeout
└── ClientClosed                 the client (or subscription) was closed
"""

from __future__ import annotations


class MeshClientError(Exception):
    code = "UNKNOWN"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class InvalidArgument(MeshClientError):
    code = "INVALID_ARGUMENT"


class NotFound(MeshClientError):
    code = "NOT_FOUND"


class AuthenticationFailed(MeshClientError):
    code = "UNAUTHENTICATED"


class PermissionDenied(MeshClientError):
    code = "PERMISSION_DENIED"


class TooLarge(MeshClientError):
    code = "RESOURCE_EXHAUSTED"


class Unavailable(MeshClientError):
    code = "UNAVAILABLE"


class RequestTimeout(MeshClientError):
    code = "DEADLINE_EXCEEDED"


class ClientClosed(MeshClientError):
    code = "CANCELLED"


_BY_GRPC_CODE: dict[str, type[MeshClientError]] = {
    "INVALID_ARGUMENT": InvalidArgument,
    "NOT_FOUND": NotFound,
    "UNAUTHENTICATED": AuthenticationFailed,
    "PERMISSION_DENIED": PermissionDenied,
    "RESOURCE_EXHAUSTED": TooLarge,
    "UNAVAILABLE": Unavailable,
    "DEADLINE_EXCEEDED": RequestTimeout,
    "CANCELLED": ClientClosed,
}
_BY_HTTP_STATUS: dict[int, type[MeshClientError]] = {
    400: InvalidArgument,
    401: AuthenticationFailed,
    403: PermissionDenied,
    404: NotFound,
    413: TooLarge,
    503: Unavailable,
}


def from_grpc(code_name: str, details: str) -> MeshClientError:
    """The typed error for a gRPC status (by name, e.g. "UNAVAILABLE")."""
    return _BY_GRPC_CODE.get(code_name, MeshClientError)(details or code_name, code=code_name)


def from_http(status: int, message: str) -> MeshClientError:
    cls = _BY_HTTP_STATUS.get(status, MeshClientError)
    return cls(message or f"HTTP {status}", code=cls.code if cls is not MeshClientError else None)

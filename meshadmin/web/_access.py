"""Permission checks for views: logged in (else the login page), then the permission (else 403)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.contrib.auth.decorators import login_required, permission_required

View = Callable[..., Any]


def requires(permission: str) -> Callable[[View], View]:
    def wrap(view: View) -> View:
        return login_required(permission_required(permission, raise_exception=True)(view))

    return wrap

"""How every page is wrapped: logged in (else the login page), the permission (else 403), and
a capture store that cannot answer shown as a 503 page saying why (not a server error)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from django.contrib.auth.decorators import login_required, permission_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from tracing.clickhouse import ClickhouseError

View = Callable[..., Any]


def _store_errors(view: View) -> View:
    @functools.wraps(view)
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        try:
            return view(request, *args, **kwargs)  # type: ignore[no-any-return]
        except ClickhouseError as e:
            message = f"the capture store did not answer: {e}"
            return render(request, "web/error.html", {"error": message}, status=503)

    return wrapped


def requires(permission: str) -> Callable[[View], View]:
    def wrap(view: View) -> View:
        checked = permission_required(permission, raise_exception=True)(_store_errors(view))
        return login_required(checked)

    return wrap

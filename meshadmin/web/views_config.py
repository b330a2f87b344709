"""Configuration of the mesh (admins): topics and subscriptions, live from the runtime's API."""

from __future__ import annotations

import json
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render

from meshadmin.web._access import requires
from meshadmin.web._roles import CONFIGURE
from meshadmin.web._runtime_api import RuntimeApi, RuntimeApiError

MAX_SHOWN = 500
"""Subscriptions one page shows (the runtime lists them all)."""


def _subscription(form: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "topic": form.get("topic", "").strip(),
        "group": form.get("group", "").strip(),
        "sink": form.get("sink", "").strip(),
        "mode": form.get("mode", "clustering"),
    }
    attempts = form.get("max_attempts", "").strip()
    if attempts:
        if not attempts.isdigit():
            raise RuntimeApiError(f"max attempts {attempts!r} is not a whole number, e.g. 5")
        body["retry"] = {"max_attempts": int(attempts)}
    filters = form.get("filters", "").strip()
    if filters:
        try:
            body["filters"] = json.loads(filters)
        except ValueError as e:
            raise RuntimeApiError(
                f'filters are not JSON ({e}); write e.g. [{{"prefix": {{"type": "order."}}}}]'
            ) from None
    return body


@requires(CONFIGURE)
def subscriptions(request: HttpRequest) -> HttpResponse:
    api = RuntimeApi(str(settings.MESHTAP_RUNTIME_URL))
    form = request.POST if request.method == "POST" else {}
    context: dict[str, Any] = {"runtime": api.base_url, "form": form}
    if request.method == "POST":
        action = request.POST.get("action", "")
        try:
            if action == "subscribe":
                created = api.subscribe(_subscription(request.POST))
                messages.success(request, f"subscribed {created['group']} to {created['topic']}")
            elif action == "unsubscribe":
                api.unsubscribe(request.POST.get("id", ""))
                messages.success(request, "subscription removed")
            elif action == "create_topic":
                api.create_topic(request.POST.get("name", "").strip())
                messages.success(request, "topic created")
            elif action == "delete_topic":
                api.delete_topic(request.POST.get("name", ""))
                messages.success(request, "topic deleted")
            else:
                raise RuntimeApiError(f"unknown action {action!r}")
            return redirect("web:subscriptions")
        except RuntimeApiError as e:
            context["error"] = str(e)
    try:
        context["topics"] = api.topics()
        found = api.subscriptions()
        context["subscriptions"] = found[:MAX_SHOWN]
        context["more"] = max(0, len(found) - MAX_SHOWN)
    except RuntimeApiError as e:
        context["error"] = str(e)
    status = 400 if request.method == "POST" and "error" in context else 200
    return render(request, "web/subscriptions.html", context, status=status)

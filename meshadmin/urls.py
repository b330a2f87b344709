"""URL routes of the web admin."""

from __future__ import annotations

from django.contrib import admin
from django.urls import include, path

from meshadmin import _api

urlpatterns = [
    path("admin/", admin.site.urls),
    # The JSON API (meshadmin/_api.py): traces and replay jobs for scripts and the README tour.
    path("api/traces", _api.traces, name="api-traces"),
    path("api/traces/<str:trace_id>", _api.trace, name="api-trace"),
    path("api/replays", _api.start_replay, name="api-replays"),
    path("api/replays/<str:replay_id>", _api.replay_status, name="api-replay"),
    path("api/replays/<str:replay_id>/diff", _api.replay_diff, name="api-replay-diff"),
    path("", include("meshadmin.web.urls")),
]

"""The web admin's routes (included at the site root by ``meshadmin.urls``)."""

from __future__ import annotations

from pathlib import Path

from django.contrib.auth import views as auth_views
from django.urls import path
from django.views.static import serve

from meshadmin.web import views_config, views_events, views_replay, views_traces

app_name = "web"

# Served by Django itself so `runserver` works without DEBUG or collectstatic (the files are a
# few KiB; put a web server in front for anything bigger).
STATIC_DIR = Path(__file__).parent / "static" / "web"

urlpatterns = [
    path("", views_traces.traces, name="traces"),
    path("login/", auth_views.LoginView.as_view(template_name="web/login.html"), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("traces/<str:trace_id>/", views_traces.trace, name="trace"),
    path("events/", views_events.events, name="events"),
    path(
        "events/<str:topic>/<int:published_ns>/<path:event_id>",
        views_events.event,
        name="event",
    ),
    path("static/web/<path:path>", serve, {"document_root": STATIC_DIR}, name="static"),
    path("config/subscriptions/", views_config.subscriptions, name="subscriptions"),
    path("topology/", views_events.topology, name="topology"),
    path("replays/", views_replay.replays, name="replays"),
    path("replays/new/", views_replay.replay_new, name="replay_new"),
    path("replays/<int:pk>/", views_replay.replay, name="replay"),
    path("replays/<int:pk>/progress.json", views_replay.replay_progress, name="replay_progress"),
    path("replays/<int:pk>/<str:action>/", views_replay.replay_command, name="replay_command"),
]

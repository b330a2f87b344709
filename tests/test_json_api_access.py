"""Who may call the JSON API (``/api/...``) when loopback is not trusted: the web admin's roles
apply, production targets need the admin role, and a browser session cannot be used by another
site to start a replay (CSRF). No store is touched: every request here is refused before one is
needed, or only creates the job row."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.contrib.auth.models import Group, User
from django.test import Client

from meshadmin.models import ReplayJob

SANDBOX_SPEC = {
    "topics": ["orders.#"],
    "since": "2026-11-26T10:00:00+00:00",
    "until": "2026-11-26T10:05:00+00:00",
    "target_url": "http://127.0.0.1:9",
}


@pytest.fixture(autouse=True)
def _loopback_not_trusted(settings: Any) -> None:
    # Django's test client calls from 127.0.0.1, like a local proxy would.
    settings.MESHTAP_API_LOOPBACK_ANONYMOUS = False


def user_with(role: str, *, csrf_checks: bool = False) -> Client:
    user = User.objects.create_user(f"{role.lower()}-api", password="correct horse 1")
    user.groups.add(Group.objects.get(name=role))
    client = Client(enforce_csrf_checks=csrf_checks)
    assert client.login(username=user.username, password="correct horse 1")
    return client


def post_replay(client: Client, spec: dict[str, Any], **extra: Any) -> Any:
    return client.post("/api/replays", json.dumps(spec), content_type="application/json", **extra)


@pytest.mark.django_db
def test_anonymous_callers_are_told_to_log_in() -> None:
    response = Client().get("/api/traces")
    assert response.status_code == 403
    assert "log in to the admin (/login/)" in response.json()["message"]
    assert post_replay(Client(), SANDBOX_SPEC).status_code == 403
    assert ReplayJob.objects.count() == 0


@pytest.mark.django_db
def test_an_sre_browses_but_cannot_start_a_replay() -> None:
    sre = user_with("SRE")
    assert sre.get("/api/replays/r-nosuch").status_code == 404  # browsing is allowed
    response = post_replay(sre, SANDBOX_SPEC)
    assert response.status_code == 403
    assert "'web.replay_sandbox'" in response.json()["message"]
    assert ReplayJob.objects.count() == 0


@pytest.mark.django_db
def test_qa_replays_into_a_sandbox_but_not_into_production() -> None:
    qa = user_with("QA")
    refused = post_replay(qa, {**SANDBOX_SPEC, "to_prefix": "", "allow_production": True})
    assert refused.status_code == 403
    assert "production" in refused.json()["message"]
    assert ReplayJob.objects.count() == 0

    accepted = post_replay(qa, SANDBOX_SPEC)
    assert accepted.status_code == 202, accepted.content
    assert ReplayJob.objects.get().requested_by == "qa-api"


@pytest.mark.django_db
def test_a_session_write_without_the_csrf_token_is_refused() -> None:
    qa = user_with("QA", csrf_checks=True)
    response = post_replay(qa, SANDBOX_SPEC)
    assert response.status_code == 403
    assert response.json()["error"] == "csrf"
    assert ReplayJob.objects.count() == 0

    qa.get("/login/")  # the admin's pages hand out the csrftoken cookie
    token = qa.cookies["csrftoken"].value
    accepted = post_replay(qa, SANDBOX_SPEC, HTTP_X_CSRFTOKEN=token)
    assert accepted.status_code == 202, accepted.content

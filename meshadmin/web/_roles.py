"""The three roles, as Django groups: what each may do (see ``models.Access``)."""

from __future__ import annotations

from typing import Final

SRE: Final = "SRE"
QA: Final = "QA"
ADMIN: Final = "admin"

BROWSE: Final = "web.browse"
REPLAY: Final = "web.replay_sandbox"
REPLAY_PRODUCTION: Final = "web.replay_production"
CONFIGURE: Final = "web.configure"

GROUP_PERMISSIONS: Final = {
    SRE: ("browse",),
    QA: ("browse", "replay_sandbox"),
    ADMIN: ("browse", "replay_sandbox", "replay_production", "configure"),
}
"""Codenames of ``web.Access`` permissions per group; admin also gets every permission of the
``meshadmin`` app (configuration in the Django admin)."""

ROLES: Final = (SRE, QA, ADMIN)

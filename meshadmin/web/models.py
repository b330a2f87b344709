"""The web admin's permissions, on a model without a table (Django keeps permissions per model).

``browse`` every read-only page; ``replay_sandbox`` start replays into sandbox topics
(``replay.``/``sandbox.`` prefixes); ``replay_production`` replays that may write anything else
(``allow_production``); ``configure`` the runtime's topics and subscriptions. Groups
(``_roles``) bundle them.
"""

from __future__ import annotations

from django.db import models


class Access(models.Model):
    class Meta:
        managed = False
        default_permissions = ()
        permissions = [
            ("browse", "Browse traces, events and topology"),
            ("replay_sandbox", "Start and control replays into sandbox topics"),
            ("replay_production", "Start replays that target production topics"),
            ("configure", "Change topics and subscriptions of the runtime"),
        ]

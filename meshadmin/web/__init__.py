"""The web admin's pages: trace search and waterfall, event browser, topology, replay console.

Server-rendered Django views over the read side of ``tracing`` and the replay jobs of
``meshadmin``; static assets (CSS, a few hundred lines of plain JS) ship in ``static/web``.
Who may do what is three groups made by a data migration (``_roles``): SRE browse, QA also
replay into sandboxes, admin everything (production-target replays, configuration).
"""

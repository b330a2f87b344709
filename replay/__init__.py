"""Meshtap replay: window selection, dry run, pacing, transforms and outcome diff. No Django.

Built out by the replay issue.
"""

from __future__ import annotations

__all__: list[str] = []

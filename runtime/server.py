"""Embedding the runtime in another process: the public face of ``runtime._server``.

``meshadmin``'s standalone mode and demo run a :class:`Runtime` in their own event loop, built
from the same flags and environment variables as ``python -m runtime``
(:func:`config_from_args`). Kept apart from ``runtime/__init__`` so that importing ``runtime``
for its data types (as ``tracing``'s writer process does) does not load the servers.
"""

from __future__ import annotations

from runtime._config import RuntimeConfig, config_from_args
from runtime._server import Runtime

__all__ = ["Runtime", "RuntimeConfig", "config_from_args"]

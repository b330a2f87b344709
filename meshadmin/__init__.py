"""Meshtap web admin: the Django project and the composition root.

The only package that reads settings and environment variables and wires runtime, tracing and
replay together. Celery tasks, beat schedules and management commands live here too.
"""

from __future__ import annotations

# The Celery app loads with Django, so @shared_task binds to it (Celery's Django convention).
from meshadmin.celery import app as celery_app

__all__ = ["celery_app"]

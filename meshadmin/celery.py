"""The Celery app: ``celery -A meshadmin worker``.

Kept small and conventional: configuration from Django settings under the ``CELERY_`` prefix
(broker ``memory://`` by default, Redis in server mode), tasks found in ``meshadmin.tasks`` by
autodiscovery. Beat schedules (audits, retention) are added by their own milestone.
"""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "meshadmin.settings")

app = Celery("meshadmin")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

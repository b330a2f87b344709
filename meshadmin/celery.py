"""The Celery app: ``celery -A meshadmin worker``.

Kept small and conventional: configuration from Django settings under the ``CELERY_`` prefix
(broker ``memory://`` by default, Redis in server mode), tasks found in ``meshadmin.tasks`` by
autodiscovery. Housekeeping beat schedules are declared in ``meshadmin.scheduled``; audits'
schedules are django_celery_beat rows (``CELERY_BEAT_SCHEDULER`` is its database scheduler).

    python -m celery -A meshadmin worker -Q replay,audit,housekeeping
    python -m celery -A meshadmin beat
"""

from __future__ import annotations

import os

from celery import Celery
from kombu import Exchange
from kombu import Queue as KombuQueue

from meshadmin.queues import ROUTES, Queue
from meshadmin.scheduled import HOUSEKEEPING_SCHEDULE

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "meshadmin.settings")

app = Celery("meshadmin")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.task_queues = [KombuQueue(q.value, Exchange(q.value), routing_key=q.value) for q in Queue]
app.conf.task_default_queue = Queue.HOUSEKEEPING.value
app.conf.task_routes = ROUTES
app.conf.beat_schedule = HOUSEKEEPING_SCHEDULE
app.autodiscover_tasks()

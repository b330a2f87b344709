"""Audits in the web admin: ``Audit`` (a kind, its parameters, a schedule kept in sync with a
django_celery_beat ``PeriodicTask``, notification targets) and ``AuditRun`` (one run's verdict,
findings and figures).

Its own Django app (label ``audits``) with its own migrations, so it merges apart from the rest
of meshadmin. The checks themselves are the Django-free ``auditing`` package; this app stores,
schedules, runs (``runner.execute_audit``, called by ``meshadmin.tasks.run_audit``) and notifies
(``notify``).
"""

"""Meshtap web admin: the Django project and the composition root.

The only package that reads settings and environment variables and wires runtime, tracing and
replay together. Celery tasks, beat schedules and management commands live here too.
"""

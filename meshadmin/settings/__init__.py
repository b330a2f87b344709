"""Django settings. Environment is read here and nowhere else (`MESHTAP_*`, `DJANGO_*`)."""

from __future__ import annotations

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent.parent
VAR_DIR = Path(os.environ.get("MESHTAP_VAR_DIR", BASE_DIR / "var"))

DEBUG = os.environ.get("DJANGO_DEBUG", "0") == "1"
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "meshtap-insecure-development-key-change-me")
ALLOWED_HOSTS = os.environ.get("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost").split(",")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "meshadmin",
    "django_celery_beat",
    "meshadmin.audits",
    "meshadmin.web",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "meshadmin.urls"
WSGI_APPLICATION = "meshadmin.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("MESHTAP_DJANGO_DB", str(VAR_DIR / "meshadmin.sqlite3")),
        # The web admin, Celery workers and beat share the file in server mode.
        "OPTIONS": {"timeout": 20},
    }
}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
LOGIN_URL = "web:login"
LOGIN_REDIRECT_URL = "web:traces"
LOGOUT_REDIRECT_URL = "web:login"

# Where the runtime this admin talks to lives (used by later features: subscriptions sync).
MESHTAP_RUNTIME_URL = os.environ.get("MESHTAP_RUNTIME_URL", "http://127.0.0.1:10105")
# The API token replays send to a mesh with authentication (a client with the `replay` right).
MESHTAP_REPLAY_TOKEN = os.environ.get("MESHTAP_REPLAY_TOKEN", "")

# The capture store (tracing.clickhouse): clickhouse://host:9000/meshtap, or chDB in-process.
MESHTAP_CLICKHOUSE_URL = os.environ.get(
    "MESHTAP_CLICKHOUSE_URL", f"chdb://{VAR_DIR.resolve() / 'chdb'}"
)

# Celery (meshadmin/celery.py): in-process memory transport by default, Redis in server mode
# (MESHTAP_CELERY_BROKER_URL=redis://host:6379/1; the result backend follows the broker).
CELERY_BROKER_URL = os.environ.get("MESHTAP_CELERY_BROKER_URL", "memory://")
CELERY_RESULT_BACKEND = os.environ.get(
    "MESHTAP_CELERY_RESULT_BACKEND",
    CELERY_BROKER_URL if CELERY_BROKER_URL.startswith(("redis://", "rediss://")) else None,
)
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_RESULT_EXPIRES = 24 * 3600
# Redis redelivers a task whose worker died unacked after this many seconds; it must exceed the
# longest task (replays resume from their checkpoint, so a redelivered long replay is harmless).
# Workers look for such tasks every MESHTAP_CELERY_RESTORE_INTERVAL seconds.
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": int(os.environ.get("MESHTAP_CELERY_VISIBILITY_TIMEOUT", "3600")),
    "unacked_restore_interval": int(os.environ.get("MESHTAP_CELERY_RESTORE_INTERVAL", "60")),
    "unacked_restore_throttle": 1,
}
# Audits' schedules are django_celery_beat rows; queues, routes and the housekeeping schedule
# are declared in code (meshadmin/queues.py, meshadmin/scheduled.py).
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
# Beat writes a task's last run to the database right after sending it (Celery's default is every
# 3 minutes): a beat killed and restarted would otherwise send again what it had just sent.
CELERY_BEAT_SYNC_EVERY = 1

# Housekeeping (meshadmin.tasks, schedules in meshadmin.scheduled): capture tables keep this many
# days; capture health reads the runtime's /metrics (MESHTAP_RUNTIME_URL).
MESHTAP_RETENTION_DAYS = int(os.environ.get("MESHTAP_RETENTION_DAYS", "30"))

# Audit notifications: the sender of audit emails (Django's EMAIL_* settings pick the backend).
DEFAULT_FROM_EMAIL = os.environ.get("MESHTAP_EMAIL_FROM", "meshtap@localhost")
EMAIL_BACKEND = os.environ.get(
    "MESHTAP_EMAIL_BACKEND", "django.core.mail.backends.smtp.EmailBackend"
)
EMAIL_FILE_PATH = os.environ.get("MESHTAP_EMAIL_FILE_PATH", str(VAR_DIR / "mail"))
EMAIL_HOST = os.environ.get("MESHTAP_EMAIL_HOST", "localhost")
EMAIL_PORT = int(os.environ.get("MESHTAP_EMAIL_PORT", "25"))
# Replays started from the web console run in a thread of the web process when no worker can
# reach the broker (the in-process memory:// default); with Redis, a worker runs them.
MESHTAP_REPLAY_IN_PROCESS = (
    os.environ.get("MESHTAP_REPLAY_IN_PROCESS", "1" if CELERY_BROKER_URL == "memory://" else "0")
    == "1"
)

# Where replay keeps the spool of its own spans (replay spans linked to the originals).
MESHTAP_REPLAY_SPOOL_DIR = os.environ.get("MESHTAP_REPLAY_SPOOL_DIR", str(VAR_DIR / "replay-spool"))

# Standalone mode (`manage.py standalone`): the admin user it creates at first start. Without a
# password here, one is generated and printed once.
MESHTAP_ADMIN_USER = os.environ.get("MESHTAP_ADMIN_USER", "admin")
MESHTAP_ADMIN_PASSWORD = os.environ.get("MESHTAP_ADMIN_PASSWORD", "")

# The JSON API (/api/...): anonymous calls from loopback are allowed unless this is "0"; other
# callers must be logged in as staff.
MESHTAP_API_LOOPBACK_ANONYMOUS = os.environ.get("MESHTAP_API_LOOPBACK_ANONYMOUS", "1") == "1"

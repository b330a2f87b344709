"""Production settings: ``DJANGO_SETTINGS_MODULE=meshadmin.settings.production``.

Everything of the base settings, plus what ``manage.py check --deploy`` asks for: no DEBUG, a
real secret key from the environment, cookies only over HTTPS and not readable by scripts,
CSRF on, HSTS and a redirect to HTTPS (the admin is served over TLS, directly or by a proxy
that sets ``X-Forwarded-Proto``), no framing, no MIME sniffing. A test runs
``check --deploy --fail-level WARNING`` against this module.

Environment (read here, as in the base module):

* ``DJANGO_SECRET_KEY`` (required): 50+ random characters, e.g.
  ``python -c 'import secrets; print(secrets.token_urlsafe(50))'``
* ``DJANGO_ALLOWED_HOSTS``: the admin's host names, comma-separated
* ``MESHTAP_ADMIN_BEHIND_PROXY=1``: trust ``X-Forwarded-Proto: https`` from the TLS proxy
* ``MESHTAP_ADMIN_HSTS_SECONDS`` (default one year); ``MESHTAP_ADMIN_HSTS_PRELOAD=0`` to leave
  the host out of browsers' preload lists
"""

from __future__ import annotations

import os

from django.core.exceptions import ImproperlyConfigured

from meshadmin.settings import *  # noqa: F403

DEBUG = False

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "")
if len(SECRET_KEY) < 50 or SECRET_KEY.startswith(("meshtap-insecure", "django-insecure")):
    raise ImproperlyConfigured(
        "DJANGO_SECRET_KEY must be set to 50 or more random characters in production, e.g. "
        "`python -c 'import secrets; print(secrets.token_urlsafe(50))'`"
    )

SESSION_COOKIE_SECURE = True
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_SECURE = True
CSRF_COOKIE_HTTPONLY = True

SECURE_SSL_REDIRECT = True
SECURE_HSTS_SECONDS = int(os.environ.get("MESHTAP_ADMIN_HSTS_SECONDS", str(365 * 24 * 3600)))
SECURE_HSTS_INCLUDE_SUBDOMAINS = True
SECURE_HSTS_PRELOAD = os.environ.get("MESHTAP_ADMIN_HSTS_PRELOAD", "1") == "1"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
if os.environ.get("MESHTAP_ADMIN_BEHIND_PROXY", "0") == "1":
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# The JSON API trusts no address: behind a proxy on the same host every request is from loopback.
MESHTAP_API_LOOPBACK_ANONYMOUS = False

# Sessions end with the browser and after 8 hours of use at most.
SESSION_EXPIRE_AT_BROWSER_CLOSE = True
SESSION_COOKIE_AGE = 8 * 3600

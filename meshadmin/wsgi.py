"""WSGI entry point (`gunicorn meshadmin.wsgi:application`, server mode's web service).

Static files (the admin's CSS and JS, gathered by `manage.py collectstatic` into STATIC_ROOT)
are served by WhiteNoise in front of Django, so no separate web server is needed.
"""

from __future__ import annotations

import os

from django.conf import settings
from django.core.wsgi import get_wsgi_application
from whitenoise import WhiteNoise

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "meshadmin.settings")
application = WhiteNoise(get_wsgi_application(), prefix=settings.STATIC_URL)
if os.path.isdir(settings.STATIC_ROOT):
    application.add_files(str(settings.STATIC_ROOT), prefix=settings.STATIC_URL)

from __future__ import annotations

from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True
    dependencies: list[tuple[str, str]] = []

    operations = [
        migrations.CreateModel(
            name="Access",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False)),
            ],
            options={
                "managed": False,
                "default_permissions": (),
                "permissions": [
                    ("browse", "Browse traces, events and topology"),
                    ("replay_sandbox", "Start and control replays into sandbox topics"),
                    ("replay_production", "Start replays that target production topics"),
                    ("configure", "Change topics and subscriptions of the runtime"),
                ],
            },
        ),
    ]

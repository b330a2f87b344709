"""Data migration: the SRE, QA and admin groups with their permissions."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.management import create_permissions
from django.db import migrations

from meshadmin.web._roles import ADMIN, GROUP_PERMISSIONS


def make_groups(apps: Any, schema_editor: Any) -> None:
    # Permissions are normally made after all migrations; these groups need them now.
    for config in apps.get_app_configs():
        config.models_module = True
        create_permissions(config, apps=apps, verbosity=0)
        config.models_module = None
    group_model = apps.get_model("auth", "Group")
    permission_model = apps.get_model("auth", "Permission")
    for name, codenames in GROUP_PERMISSIONS.items():
        group, _ = group_model.objects.get_or_create(name=name)
        wanted = permission_model.objects.filter(
            content_type__app_label="web", codename__in=codenames
        )
        group.permissions.add(*wanted)
        if name == ADMIN:
            group.permissions.add(
                *permission_model.objects.filter(content_type__app_label="meshadmin")
            )


def drop_groups(apps: Any, schema_editor: Any) -> None:
    apps.get_model("auth", "Group").objects.filter(name__in=list(GROUP_PERMISSIONS)).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("web", "0001_initial"),
        ("meshadmin", "0001_initial"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [migrations.RunPython(make_groups, drop_groups)]

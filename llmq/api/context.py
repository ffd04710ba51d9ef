"""What every blueprint reads from the app it runs in: the settings and the database that
``create_app`` stored in ``app.extensions``, typed."""

from __future__ import annotations

from typing import cast

from flask import current_app

from llmq.config.settings import Settings
from llmq.models.db import Database

__all__ = ["app_db", "app_settings"]


def app_settings() -> Settings:
    return cast(Settings, current_app.extensions["llmq.settings"])


def app_db() -> Database:
    return cast(Database, current_app.extensions["llmq.db"])

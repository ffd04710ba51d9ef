"""WSGI entry point for gunicorn: ``gunicorn 'llmq.api.wsgi:app'`` (settings from the environment)."""

from llmq.api.app import create_app

app = create_app()

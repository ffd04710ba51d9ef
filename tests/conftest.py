"""Shared test settings. Unit tests need nothing running; integration tests (tests/integration)
need the machine's Postgres and Redis and start real processes themselves."""

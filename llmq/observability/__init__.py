"""What llmq tells its operators beyond logs: error reports (Sentry)."""

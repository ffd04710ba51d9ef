"""What llmq is told: the settings (environment), the providers file, model ids and the provider
specs built from the settings. Every other room reads its configuration from here."""

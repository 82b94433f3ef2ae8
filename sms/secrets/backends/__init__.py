"""SecretStore implementations: ``sql`` (SQLite/PostgreSQL, the default) and ``vault`` (OpenBao/Vault KV v2)."""

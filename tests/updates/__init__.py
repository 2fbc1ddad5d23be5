"""Over-the-air updates: repository, device sync, attacks, crash rollback, CLI."""

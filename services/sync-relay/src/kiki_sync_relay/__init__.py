"""kiki-sync-relay."""

"""kiki-updater."""

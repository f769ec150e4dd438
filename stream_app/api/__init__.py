"""The personalization read API and the live dashboard (``intent-stream api``)."""

"""Alembic revisions shipped with the package (``transactional_outbox:migrations/versions``)."""

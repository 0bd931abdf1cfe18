"""Alembic migrations of the results database (run by rd2t.service.db.migrate at start-up)."""

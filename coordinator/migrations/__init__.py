"""Alembic migrations of the coordinator's database (run by coordinator.db.engine.migrate)."""

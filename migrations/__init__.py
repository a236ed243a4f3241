"""Alembic migrations of the Trainwire schema (run with `trainwire db upgrade`)."""

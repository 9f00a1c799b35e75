"""Persistence adapter: SQLModel tables, the engine with its migrations, the repositories."""

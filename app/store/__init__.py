"""The metadata store: the only code that speaks SQL (SQLite through aiosqlite)."""

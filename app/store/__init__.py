"""The metadata store: the only code that speaks SQL (SQLite: reads through aiosqlite, writes
as `db.Database.write` describes)."""

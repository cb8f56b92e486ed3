"""The moderator console: server-rendered pages under ``/console`` on ingest, behind a session of the admin key."""

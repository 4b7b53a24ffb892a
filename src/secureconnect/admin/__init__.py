"""The operator's admin interface: a UNIX socket per process and its commands (docs/admin.md)."""

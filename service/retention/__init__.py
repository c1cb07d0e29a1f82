"""Retention: per-tenant policies, a dry-run preview, and the purge job that applies them."""

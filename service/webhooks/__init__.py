"""Webhooks: per-tenant endpoints, an outbox filled by the database in the same transaction as a background
response's outcome, and delivery signed as the Standard Webhooks spec says."""

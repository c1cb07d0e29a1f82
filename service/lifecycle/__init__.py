"""A conversation's life beyond turns: export and import as JSON Lines, and forks."""

"""stage tier."""

"""workflow tier."""

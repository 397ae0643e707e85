"""fault tier."""

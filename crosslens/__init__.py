"""crosslens."""

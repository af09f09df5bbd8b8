"""linetap.config."""

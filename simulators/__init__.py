"""linetap.simulators."""

"""linetap.buffers."""

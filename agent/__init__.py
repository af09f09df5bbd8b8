"""linetap.agent."""

"""Broker fixtures (filled in by the forwarder work)."""

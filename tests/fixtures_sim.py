"""Simulator fixtures (filled in by the Modbus work)."""

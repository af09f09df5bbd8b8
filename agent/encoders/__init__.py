"""MQTT payload encoders: how buffer rows become message payloads."""

"""Operator commands: they ask the running service over its HTTP listener."""

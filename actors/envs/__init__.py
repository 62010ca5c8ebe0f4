"""Environments for multi-turn rollouts: the interface, the registry and the built-in tools."""

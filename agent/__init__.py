"""Yikatong Edge terminal agent: credentials, decisions, local store, journal, daemon, CLI."""

__version__ = "0.1.0"

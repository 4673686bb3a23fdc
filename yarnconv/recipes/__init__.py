"""Shipped recipes (TOML files, package data): ``yarnconv run NAME`` finds them by name."""

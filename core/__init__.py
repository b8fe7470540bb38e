"""Shared kernel of carepost: settings, canonical schema, PHI type, states.

Every other package may import from here; this package imports none of
them, so it stays the bottom of the dependency graph.
"""

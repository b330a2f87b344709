"""Meshtap tests. A package so helpers import as ``tests.servers`` with no name clashes."""

"""Integrations with other frameworks, each an optional extra (`pgtasks[django]`).

Nothing in the core imports this package.
"""

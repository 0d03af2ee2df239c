"""Benchmarks behind `nearcat bench`, one module per bench: each returns a JSON-able dict and
prints a table.

Numbers are only comparable on the same machine: every result records the machine it ran on.
"""

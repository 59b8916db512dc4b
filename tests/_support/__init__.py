"""Helpers shared by the fault-injection and bad-input tests (subprocess drivers, the CLI command)."""

"""Data sets: reading and checking files, the registry, the import job, and how a row becomes training text."""

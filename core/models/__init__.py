"""Models: the registry, and the jobs that make one (from scratch, the starter, an import)."""

"""Benchmarks: ``cardless bench <name>``; each ends with one JSON line of ratios and numbers."""

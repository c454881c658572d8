"""What a run checks and writes: preflight checks, provenance records, atomic file writes."""

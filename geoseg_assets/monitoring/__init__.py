"""Monitoring: per-tile scene features, data/class drift (Evidently) and scene quality rules."""

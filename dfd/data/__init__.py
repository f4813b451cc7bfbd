"""Data in: dataset adapters and validation, the manifest, media reading, provenance (git, DVC hashes), the DVC
dataset registry, the demo dataset, and face detection and extraction."""

"""Finding failures without mined attributions: minimal attribute slices (PRIME) and generate-then-discover.

`failmode.slices` holds the exhaustive slice search; this package holds what both methods share (attribute
tagging with calibrated thresholds, the classifier interface, outputs) and the two pipelines
(`failmode.discovery.slicing`, `failmode.discovery.discover`).
"""

"""Datasets for equivariant models: SCAN and SCAN-II (`hf_equivariant.experiments.data.scan`)."""

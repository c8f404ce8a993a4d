"""Experiments built on hf-equivariant (optional extras): fairness, SCAN, multi-input networks, the CLI commands."""

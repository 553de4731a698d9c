"""Hydra entry points behind the console scripts and scripts/."""

"""Runs: presets and overrides (config), config -> data, model and run folder (recipe)."""

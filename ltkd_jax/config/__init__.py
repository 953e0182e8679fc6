"""Configs: every field with its default and meaning (`defaults`), the recipes the files
under `configs/` are built from (`recipes`), and the checks a config passes before any data
is read (`checks`)."""

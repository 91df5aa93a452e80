"""Presets (ml_collections configs), installed as `unclip_jax.configs`.

`--config NAME:ARG` (e.g. `shapes:decoder`) → `get_config(ARG)` of the preset NAME, from any
directory; `--config path/to/file.py:ARG` loads a file instead (a preset of your own).
"""

"""ml_collections configs: `configs/NAME.py:ARG` → `get_config(ARG)`."""

"""`python -m unclip_jax.cli COMMAND ...` = `unclip-jax COMMAND ...`."""
import sys

from unclip_jax.cli import main

sys.exit(main())

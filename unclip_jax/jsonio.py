"""Reading a JSON object from a file of a model directory or checkpoint, with a one-line
error that names the file and the fix (JSON is data: nothing in it is executed)."""
from __future__ import annotations

import json

from unclip_jax.errors import UserError


def read_json_object(path: str, fix: str, error: type[Exception] = UserError) -> dict:
    """The JSON object in `path`; `error(f"{path} is not valid JSON (…); {fix}")` when the file
    is not UTF-8 JSON, and `error(f"{path} is not a JSON object; {fix}")` when it holds
    another JSON value."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise error(f"{path} is not valid JSON ({e}); {fix}") from None
    if not isinstance(data, dict):
        raise error(f"{path} is not a JSON object; {fix}")
    return data

"""JSON-safe copies of result values: the one place that turns numpy values, tuples and non-finite floats into JSON.

``json_safe(value)`` returns a copy built from JSON's types only:

- numpy booleans, integers and floats become Python ``bool``, ``int`` and ``float``; numpy arrays and
  tuples become lists; mappings become dicts (keys unchanged), converted all the way down;
- objects with a ``to_dict()`` (result dataclasses inside a table's cells) become that dict, converted;
- a float that is nan or +-inf becomes None. Python's ``json`` would write it as ``NaN`` / ``Infinity``,
  which standard JSON has not (JavaScript's and most other parsers reject the file), and a missing
  number reads back as None either way;
- anything else (str, None, ...) is returned as it is: ``json.dumps`` still rejects what it cannot write.

``keep_non_finite=True`` keeps nan and inf as floats, for values that stay in Python (the metrics'
``to_dict()``: a nan rate is still a float). ``dumps(value, **kwargs)`` is ``json.dumps`` of
``json_safe(value)`` with ``allow_nan=False``, so a file written with it is always standard JSON.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np


def json_safe(value: Any, *, keep_non_finite: bool = False) -> Any:
    """``value`` as JSON's types (see the module docstring); nan and inf become None unless ``keep_non_finite``."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (bool, np.bool_)):  # before int: bool is an int
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        number = float(value)
        return number if keep_non_finite or math.isfinite(number) else None
    if isinstance(value, Mapping):
        return {key: json_safe(item, keep_non_finite=keep_non_finite) for key, item in value.items()}
    if isinstance(value, np.ndarray):  # tolist(): Python scalars, nested lists (a 0-d array: one scalar)
        return json_safe(value.tolist(), keep_non_finite=keep_non_finite)
    if isinstance(value, (list, tuple)):
        return [json_safe(item, keep_non_finite=keep_non_finite) for item in value]
    if hasattr(value, "to_dict"):
        return json_safe(value.to_dict(), keep_non_finite=keep_non_finite)
    return value


def dumps(value: Any, **kwargs: Any) -> str:
    """``json.dumps(json_safe(value), allow_nan=False, **kwargs)``: standard JSON, never NaN or Infinity."""
    return json.dumps(json_safe(value), allow_nan=False, **kwargs)

"""Any config.json layout -> one canonical rope block -> per-runtime schemas, with lint.

``block`` holds the data types, ``read`` parses (and lints with ``lint``), ``write`` writes a
block back in a chosen schema. All pure.
"""

from yarnconv.config.block import (
    SCHEMA_HELP,
    SCHEMAS,
    ConfigView,
    Finding,
    RopeBlock,
    Schema,
)
from yarnconv.config.lint import lint, positional_scheme
from yarnconv.config.read import MAX_CONTEXT, MAX_THETA, TYPE_ALIASES, read_config
from yarnconv.config.write import block_to_dict, write_rope

__all__ = [
    "MAX_CONTEXT",
    "MAX_THETA",
    "SCHEMAS",
    "SCHEMA_HELP",
    "TYPE_ALIASES",
    "ConfigView",
    "Finding",
    "RopeBlock",
    "Schema",
    "block_to_dict",
    "lint",
    "positional_scheme",
    "read_config",
    "write_rope",
]

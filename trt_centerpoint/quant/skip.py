"""Which layers `ptq` leaves in float: the default list, the user's `--skip` patterns, or a `sensitivity.json`.

Kept out of the command line so the rule is one function with tests, not option juggling in a handler.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from trt_centerpoint.config import ModelConfig, load_config
from trt_centerpoint.quant.quantize import DEFAULT_SKIP
from trt_centerpoint.quant.sensitivity import read_skip_list


def resolve_skip_list(skip: Sequence[str] | None, skip_from: str | Path | None,
                      cfg: ModelConfig | str | Path | None = None, default: Sequence[str] = DEFAULT_SKIP) -> list[str]:
    """The module-path glob patterns to leave in float.

    skip: the `--skip` patterns; None (no `--skip`) means `default` (the recipe's list, `quant.recipe.default_skip`),
    an empty list quantizes everything.
    skip_from: a `sensitivity --budget` output; its proposed list replaces the default and follows any explicit
    `skip` patterns (duplicates dropped, first occurrence kept). cfg: the model config the run quantizes (a
    config, bundled name or YAML path); a sensitivity.json made for another model is refused.
    """
    if not skip_from:
        return list(default if skip is None else skip)
    expect = cfg if cfg is None or isinstance(cfg, ModelConfig) else load_config(cfg)
    from_file = read_skip_list(skip_from, expect_config=expect)
    return list(dict.fromkeys([*(skip or []), *from_file]))


__all__ = ["resolve_skip_list"]

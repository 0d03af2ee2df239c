"""Named training recipes: which `TrainOptions` fields each one sets, and where its values were
measured. `nearcat train --recipe NAME` starts from one; any flag given explicitly wins.

Recipes are data, so that a new measurement changes a line here, not the command.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Any


@dataclass(frozen=True)
class Recipe:
    summary: str  # one line for --help
    source: str  # where its values came from (docs/benchmarks.md)
    options: MappingProxyType[str, Any]  # TrainOptions fields it sets; the rest keep defaults


DEFAULT_RECIPE = "best"

RECIPES: dict[str, Recipe] = {
    "fast": Recipe(
        summary="the last backbone block and the head, on features cached once per image",
        source="docs/benchmarks.md, Training: run 2 of 'Before the sender cap (2026-11-22)' "
        "(the CPU defaults until 2026-12-03); 'Recipes fast and best on the clothing trees'",
        options=MappingProxyType(
            {
                "augment": "cached",
                "trainable_blocks": 1,
                "cached_views": 1,
                "epochs": 10,
                "freeze_epochs": 1,
                "warmup_epochs": 1,
            }
        ),
    ),
    "best": Recipe(
        summary="the last 3 blocks and the head, on a fresh augmented view every epoch",
        source="docs/benchmarks.md, Training: 'Three blocks on freshly augmented images, on the "
        "CPU (2026-11-23)', +3.7 points top-1 over frozen on three seeds (GPU run C's recipe); "
        "'Recipes fast and best on the clothing trees': from Lite0 +2.0 points (fast +0.1), "
        "from Lite1 +1.6 and +4.7 on seeds 0-1 (fast -0.7)",
        options=MappingProxyType(
            {
                "augment": "online",
                "trainable_blocks": 3,
                "subcenters": 3,
                "held_out_tolerance": 0.0,
                "epochs": 12,
                "freeze_epochs": 2,
                "warmup_epochs": 2,
                "patience": 4,
            }
        ),
    ),
}

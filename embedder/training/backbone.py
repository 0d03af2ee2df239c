"""Cutting a timm EfficientNet-style backbone into a frozen prefix and a trainable tail.

The prefix (stem and early blocks) runs once per image and its output is cached; the tail
(last blocks, head convolution, pooling) and the projection head train on that cache. Both
halves are views of the same modules, so training updates the network that is saved.
"""

from __future__ import annotations

import torch
from torch import nn

from embedder.model import EmbeddingNetwork


def _blocks(backbone: nn.Module) -> nn.Sequential:
    blocks = getattr(backbone, "blocks", None)
    if not isinstance(blocks, nn.Sequential) or not hasattr(backbone, "conv_stem"):
        raise ValueError(
            f"training caches features of timm EfficientNet/MobileNet-style backbones (with "
            f"conv_stem and blocks); {type(backbone).__name__} is not one"
        )
    return blocks


def block_count(network: EmbeddingNetwork) -> int:
    return len(_blocks(network.backbone))


class Prefix(nn.Module):
    """Stem and the first `stop` blocks: pixels -> feature maps (never trained)."""

    def __init__(self, backbone: nn.Module, stop: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(backbone.conv_stem, backbone.bn1)  # type: ignore[arg-type]
        self.blocks = _blocks(backbone)[:stop]

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.stem(pixels))  # type: ignore[no-any-return]


class Tail(nn.Module):
    """The remaining blocks, head convolution and pooling: feature maps -> backbone vector."""

    def __init__(self, backbone: nn.Module, start: int) -> None:
        super().__init__()
        self.blocks = _blocks(backbone)[start:]
        self.backbone = [backbone]  # a list: not registered twice as a submodule

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        backbone = self.backbone[0]
        x = backbone.bn2(backbone.conv_head(self.blocks(features)))  # type: ignore[operator]
        return backbone.forward_head(x, pre_logits=True)  # type: ignore[operator, no-any-return]


def split(network: EmbeddingNetwork, trainable_blocks: int) -> tuple[Prefix, Tail]:
    """The frozen prefix and the tail whose last `trainable_blocks` blocks may train."""
    count = block_count(network)
    if trainable_blocks > count:
        raise ValueError(
            f"the backbone has {count} blocks; cannot train the last {trainable_blocks}"
        )
    stop = count - trainable_blocks
    return Prefix(network.backbone, stop), Tail(network.backbone, stop)


def tail_parameters(network: EmbeddingNetwork, tail: Tail) -> list[nn.Parameter]:
    """What the backbone learning rate applies to: the tail blocks and the head convolution."""
    backbone = network.backbone
    modules: list[nn.Module] = [tail.blocks, backbone.conv_head, backbone.bn2]  # type: ignore[list-item]
    return [p for m in modules for p in m.parameters()]

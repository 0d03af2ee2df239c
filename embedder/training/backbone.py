"""Cutting a timm EfficientNet-style backbone into a frozen prefix and a trainable tail.

The prefix (stem and early blocks) never trains: its output is cached once per image, or
(online augmentation) recomputed without gradients on every batch. The tail (last blocks,
head convolution, pooling) and the projection head train. With `trainable_blocks="all"` the
prefix is empty and the tail is the whole backbone, stem included. Both halves are views of
the same modules, so training updates the network that is saved.
"""

from __future__ import annotations

import torch
from torch import nn

from embedder.network import EmbeddingNetwork
from embedder.training.options import ALL_BLOCKS, Blocks


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


def _stem(backbone: nn.Module) -> nn.Sequential:
    return nn.Sequential(backbone.conv_stem, backbone.bn1)  # type: ignore[arg-type]


class Prefix(nn.Module):
    """Stem and the first `stop` blocks, or nothing at all (`stem=False`): pixels -> feature
    maps, never trained."""

    def __init__(self, backbone: nn.Module, stop: int, stem: bool = True) -> None:
        super().__init__()
        self.stem = _stem(backbone) if stem else nn.Identity()
        self.blocks = _blocks(backbone)[:stop]

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.stem(pixels))  # type: ignore[no-any-return]


class Tail(nn.Module):
    """The stem (`stem=True`) or not, the blocks from `start`, head convolution and pooling:
    feature maps (or pixels) -> backbone vector."""

    def __init__(self, backbone: nn.Module, start: int, stem: bool = False) -> None:
        super().__init__()
        self.stem = _stem(backbone) if stem else nn.Identity()
        self.blocks = _blocks(backbone)[start:]
        self.backbone = [backbone]  # a list: not registered twice as a submodule

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        backbone = self.backbone[0]
        x = self.blocks(self.stem(features))
        x = backbone.bn2(backbone.conv_head(x))  # type: ignore[operator]
        return backbone.forward_head(x, pre_logits=True)  # type: ignore[operator, no-any-return]


def split(network: EmbeddingNetwork, trainable_blocks: Blocks) -> tuple[Prefix, Tail]:
    """The frozen prefix and the tail whose last `trainable_blocks` blocks may train ("all":
    every block and the stem; the prefix is then empty and its "features" are pixels)."""
    count = block_count(network)
    if trainable_blocks == ALL_BLOCKS:
        return Prefix(network.backbone, 0, stem=False), Tail(network.backbone, 0, stem=True)
    assert isinstance(trainable_blocks, int)
    if trainable_blocks > count:
        raise ValueError(
            f"the backbone has {count} blocks; cannot train the last {trainable_blocks} "
            "(--trainable-blocks all trains every block and the stem)"
        )
    stop = count - trainable_blocks
    return Prefix(network.backbone, stop), Tail(network.backbone, stop)


def tail_parameters(network: EmbeddingNetwork, tail: Tail) -> list[nn.Parameter]:
    """What the backbone learning rate applies to: the tail's stem and blocks and the head
    convolution."""
    backbone = network.backbone
    modules: list[nn.Module] = [tail.stem, tail.blocks, backbone.conv_head, backbone.bn2]  # type: ignore[list-item]
    return [p for m in modules for p in m.parameters()]

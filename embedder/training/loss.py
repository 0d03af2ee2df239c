"""The ArcFace loss (pytorch-metric-learning), whose class centres are learnt weights."""

from __future__ import annotations

from pytorch_metric_learning.losses import ArcFaceLoss, SubCenterArcFaceLoss
from torch import nn

from embedder.training.options import TrainOptions


def build_loss(options: TrainOptions, num_classes: int) -> nn.Module:
    """ArcFace with an additive angular margin: target logit s*cos(theta + m), others s*cos(theta).

    With `subcenters` > 1, each class has that many centres (SubCenterArcFace), which
    tolerates label noise and multi-modal classes.
    """
    if options.subcenters > 1:
        return SubCenterArcFaceLoss(
            num_classes=num_classes,
            embedding_size=options.embedding_dim,
            margin=options.margin,
            scale=options.scale,
            sub_centers=options.subcenters,
        )
    return ArcFaceLoss(
        num_classes=num_classes,
        embedding_size=options.embedding_dim,
        margin=options.margin,
        scale=options.scale,
    )

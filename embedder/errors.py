"""What can go wrong with a model's files and weights, as exceptions the server and the CLI
can word for a person."""

from __future__ import annotations


class ArtifactError(Exception):
    """A model artifact directory that cannot be used as it is."""


class ArtifactChecksumError(ArtifactError):
    """weights.pt or model.onnx does not match the checksum recorded in config.json."""


class WeightsError(RuntimeError):
    """Pretrained weights could not be obtained or do not fit the architecture."""

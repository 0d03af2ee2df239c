"""The model artifact: building, writing, verifying, loading and resolving it.

An artifact is a directory holding `config.json` (the ModelConfig plus version and checksums),
`weights.pt` (the embedding network's state_dict), optionally a zero-shot head
(`zeroshot.pt`, recorded under "zero_shot" in config.json) and, once exported
(embedder.export), `model.onnx`. The version names the exact embedding weights, so vectors
from different weights never meet in one index; the zero-shot head is kept out of
`weights.pt` so adding one leaves the version, and every stored vector, as it was.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from embedder.atomic import replace_file, replace_text
from embedder.backends import TorchBackend
from embedder.config import ModelConfig, get_config
from embedder.errors import ArtifactChecksumError, ArtifactError, WeightsError
from embedder.images import DecodeLimits
from embedder.model import Embedder
from embedder.network import EmbeddingNetwork, build_network, empty_zero_shot_head, load_pretrained

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.pt"
ONNX_FILE = "model.onnx"
TRAINING_FILE = "training.json"  # written by `nearcat train`: data, split, options, metrics
ZERO_SHOT_FILE = "zeroshot.pt"
ZERO_SHOT_KEY = "zero_shot"  # config.json: the head's kind, settings, file and sha256
_ARTIFACT_KEYS = ("version", "weights_sha256", "weights_file")
_ONNX_KEYS = ("onnx_file", "onnx_sha256")  # present once the artifact has been exported
RUNTIMES = ("auto", "onnx", "torch")
DEVICES = ("auto", "cpu", "cuda")


def create_artifact(config: ModelConfig | str, out_dir: Path) -> Path:
    """Build the network from its weight source and write it as an artifact at `out_dir`.

    The directory appears complete or not at all (written beside it, then renamed), so a
    crash or a concurrent writer never leaves a half-written model.
    """
    config = get_config(config) if isinstance(config, str) else config
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} already exists; delete it or choose another directory")
    network = build_network(config)
    load_pretrained(network, config)
    _check_output(network, config)
    return write_artifact(network, config, out_dir)


def write_artifact(
    network: EmbeddingNetwork,
    config: ModelConfig,
    out_dir: Path,
    extra_files: Mapping[str, str] | None = None,
) -> Path:
    """Write `network` as an artifact at `out_dir`, with `extra_files` (name -> text) beside it.

    The directory appears complete or not at all (written beside it, then renamed).
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        replace_file(tmp / WEIGHTS_FILE, lambda f: torch.save(network.embedding_state_dict(), f))
        sha256 = _sha256(tmp / WEIGHTS_FILE)
        meta: dict[str, Any] = {
            **config.to_dict(),
            "version": f"{config.name}-{sha256[:12]}",
            "weights_sha256": sha256,
            "weights_file": WEIGHTS_FILE,
        }
        if network.semantic is not None:
            meta[ZERO_SHOT_KEY] = network.semantic.spec
            head_state = network.semantic.state_dict()
            if head_state:  # CLIP's head has no weights of its own
                replace_file(tmp / ZERO_SHOT_FILE, lambda f: torch.save(head_state, f))
                meta[ZERO_SHOT_KEY] |= {
                    "file": ZERO_SHOT_FILE,
                    "sha256": _sha256(tmp / ZERO_SHOT_FILE),
                }
        for name, text in {
            **(extra_files or {}),
            CONFIG_FILE: json.dumps(meta, indent=2) + "\n",
        }.items():
            replace_text(tmp / name, text)
        try:
            tmp.rename(out_dir)
        except OSError as exc:
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                raise FileExistsError(
                    f"{out_dir} exists: it was created meanwhile by someone else"
                ) from exc
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _check_output(network: EmbeddingNetwork, config: ModelConfig) -> None:
    """One forward pass, so a wrong embedding_dim or input_size fails before anything is saved."""
    size = config.preprocess.input_size
    with torch.inference_mode():
        try:
            features = network.backbone(torch.zeros(1, 3, size, size))
        except RuntimeError as exc:
            raise ValueError(
                f"model {config.name}: {config.architecture} fails on {size}x{size} input: {exc}"
            ) from exc
    if features.shape != (1, config.embedding_dim):
        raise ValueError(
            f"model {config.name}: config says embedding_dim {config.embedding_dim}, "
            f"but {config.architecture} gives features of shape {tuple(features.shape[1:])}"
        )


def load_artifact(
    path: Path,
    limits: DecodeLimits | None = None,
    num_threads: int | None = None,
    runtime: str = "auto",
    device: str = "auto",
) -> Embedder:
    """Load an artifact directory after verifying its files against the recorded sha256s.

    `runtime` "onnx" serves the exported `model.onnx` with ONNX Runtime, "torch" the weights
    with PyTorch, and "auto" ONNX Runtime whenever the artifact has been exported and ONNX
    Runtime can run on the device. `device` "cuda" runs on the GPU (ONNX Runtime's CUDA
    provider needs onnxruntime-gpu; PyTorch needs a CUDA build), "cpu" on the CPU, "auto" on
    the GPU where the runtime sees one.
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    path = Path(path)
    config, meta = _read_artifact_config(path)
    spec = zero_shot_spec(path)
    semantic_dim = int(spec["dim"]) if spec else 0
    if runtime == "auto":
        onnx_can_run = "onnx_file" in meta and (device != "cuda" or onnx_has_cuda())
        runtime = "onnx" if onnx_can_run else "torch"
        if "onnx_file" not in meta:
            log.info(
                "%s has no ONNX export: running it with PyTorch (`nearcat export %s` adds "
                "one, which ONNX Runtime runs 2-3x faster on a CPU)",
                path,
                path,
            )
    if runtime == "torch":
        if device == "cuda" and not torch.cuda.is_available():
            raise ArtifactError(
                "device 'cuda' was asked for, but PyTorch sees no CUDA GPU: "
                "serve on the CPU with --device cpu"
            )
        on_gpu = device == "cuda" or (device == "auto" and torch.cuda.is_available())
        network, config, version = load_network(path)
        return Embedder(
            TorchBackend(network, num_threads, device="cuda" if on_gpu else "cpu"),
            config,
            version,
            limits,
            semantic_dim=semantic_dim,
            path=path,
        )
    if "onnx_file" not in meta:
        raise ArtifactError(
            f"{path} has no ONNX model: export one with `nearcat export {path}`, "
            "or serve it with runtime 'torch'"
        )
    from embedder.onnx_backend import OnnxBackend  # onnxruntime loads only when it serves

    _verify_file(path, meta["weights_file"], meta["weights_sha256"], _rebuild_remedy(path))
    onnx_path = _verify_file(
        path,
        meta["onnx_file"],
        meta["onnx_sha256"],
        f"export it again with `nearcat export --force {path}`",
    )
    if spec is not None and "file" in spec:  # the text tower reads it
        _verify_file(path, spec["file"], spec["sha256"], _rebuild_remedy(path))
    backend = OnnxBackend(onnx_path, num_threads, providers=_onnx_providers(device))
    if backend.semantic_dim != semantic_dim:
        raise ArtifactError(
            f"{onnx_path} gives semantic vectors of length {backend.semantic_dim}, the "
            f"artifact's zero-shot head {semantic_dim}; export it again with "
            f"`nearcat export --force {path}`"
        )
    return Embedder(backend, config, meta["version"], limits, semantic_dim=semantic_dim, path=path)


def onnx_has_cuda() -> bool:
    from embedder.onnx_backend import CUDA_PROVIDER, available_providers

    return CUDA_PROVIDER in available_providers()


def _onnx_providers(device: str) -> list[str]:
    """ONNX Runtime's providers for `device`, in priority order; ArtifactError when the
    installed onnxruntime cannot run there."""
    from embedder.onnx_backend import CPU_PROVIDER, CUDA_PROVIDER, default_providers

    if device == "cpu":
        return [CPU_PROVIDER]
    if device == "cuda":
        if not onnx_has_cuda():
            raise ArtifactError(
                "device 'cuda' with runtime 'onnx' needs onnxruntime-gpu (pip install "
                "'nearcat[gpu]'); or serve with --runtime torch, or on the CPU with --device cpu"
            )
        return [CUDA_PROVIDER, CPU_PROVIDER]
    return default_providers()


def load_network(path: Path) -> tuple[EmbeddingNetwork, ModelConfig, str]:
    """An artifact's network (checksum verified), its config and its version, for training
    and export; serving goes through `load_artifact`."""
    path = Path(path)
    config, meta = _read_artifact_config(path)
    weights_path = _verify_file(
        path, meta["weights_file"], meta["weights_sha256"], _rebuild_remedy(path)
    )
    network = build_network(config)
    state = torch.load(weights_path, map_location="cpu", weights_only=True)
    try:
        network.load_state_dict(state)
    except RuntimeError as exc:
        raise ArtifactError(f"{weights_path} does not fit model {config.name}: {exc}") from exc
    spec = zero_shot_spec(path)
    if spec is not None:
        head = empty_zero_shot_head(spec, config)
        if "file" in spec:
            head_path = _verify_file(path, spec["file"], spec["sha256"], _rebuild_remedy(path))
            head_state = torch.load(head_path, map_location="cpu", weights_only=True)
            try:
                head.load_state_dict(head_state)
            except RuntimeError as exc:
                raise ArtifactError(f"{head_path} does not fit its zero-shot head: {exc}") from exc
        network.semantic = head.eval()
    return network, config, meta["version"]


def zero_shot_spec(path: Path) -> dict[str, Any] | None:
    """The artifact's zero-shot head as config.json records it; None for a model without
    one (any artifact built before heads existed)."""
    spec: dict[str, Any] | None = json.loads((Path(path) / CONFIG_FILE).read_text()).get(
        ZERO_SHOT_KEY
    )
    return spec


def _verify_file(path: Path, name: str, sha256: str, remedy: str) -> Path:
    """`path/name`, after checking it exists and has the sha256 that config.json records."""
    file = path / name
    if not file.is_file():
        raise ArtifactError(f"{path} is not a complete model artifact: {file} is missing")
    actual = _sha256(file)
    if actual != sha256:
        raise ArtifactChecksumError(
            f"{file} is corrupt or was modified: its sha256 is {actual[:12]}..., "
            f"{CONFIG_FILE} records {sha256[:12]}...; {remedy}"
        )
    return file


def _rebuild_remedy(path: Path) -> str:
    return f"delete {path} and create the artifact again"


def _read_artifact_config(path: Path) -> tuple[ModelConfig, dict[str, str]]:
    """The ModelConfig and the artifact fields (version, weights_sha256, weights_file, and
    onnx_file, onnx_sha256 once exported)."""
    if not path.is_dir():
        raise FileNotFoundError(
            f"model artifact {path} does not exist; create it with create_artifact() "
            "or pass a registered model name to resolve_model()"
        )
    config_path = path / CONFIG_FILE
    if not config_path.is_file():
        raise ArtifactError(f"{path} is not a model artifact: {CONFIG_FILE} is missing")
    try:
        data = json.loads(config_path.read_text())
        meta = {key: data.pop(key) for key in _ARTIFACT_KEYS}
        meta |= {key: data.pop(key) for key in _ONNX_KEYS if key in data}
        data.pop(ZERO_SHOT_KEY, None)  # read by zero_shot_spec
        config = ModelConfig.from_dict(data)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ArtifactError(f"{config_path} is not a valid artifact config: {exc!r}") from exc
    if ("onnx_file" in meta) != ("onnx_sha256" in meta):
        raise ArtifactError(f"{config_path}: onnx_file and onnx_sha256 go together")
    for key in ("weights_file", "onnx_file"):
        if key in meta and Path(meta[key]).name != meta[key]:
            raise ArtifactError(f"{config_path}: {key} must be a file name inside {path}")
    if meta["version"] != f"{config.name}-{meta['weights_sha256'][:12]}":
        raise ArtifactError(f"{config_path}: version does not match the name and checksum")
    return config, meta


def verify_artifact(path: Path) -> str:
    """Check every file of an artifact against the sha256 its config.json records; returns
    its version."""
    path = Path(path)
    _, meta = _read_artifact_config(path)
    _verify_file(path, meta["weights_file"], meta["weights_sha256"], _rebuild_remedy(path))
    if "onnx_file" in meta:
        _verify_file(
            path,
            meta["onnx_file"],
            meta["onnx_sha256"],
            f"export it again with `nearcat export --force {path}`",
        )
    spec = zero_shot_spec(path)
    if spec is not None and "file" in spec:
        _verify_file(path, spec["file"], spec["sha256"], _rebuild_remedy(path))
    return meta["version"]


def artifact_version(path: Path) -> str:
    """The version an artifact's config.json records (read only, nothing loaded)."""
    return _read_artifact_config(Path(path))[1]["version"]


def resolve_model(spec: str, models_dir: Path) -> Path:
    """The artifact directory for `spec`: an artifact path, or a registered model name.

    A name is materialised once as `models_dir/<name>/` and reused afterwards, which gives a
    server its default model with a checksum and a version on first start, exported to ONNX
    so that it is served by ONNX Runtime. An existing directory wins over a registered name
    of the same spelling.
    """
    if Path(spec).is_dir():
        return Path(spec)
    try:
        config = get_config(spec)
    except KeyError as exc:
        raise ValueError(
            f"{spec!r} is neither a model artifact directory nor a registered model: {exc}"
        ) from None
    target = Path(models_dir) / config.name
    if not target.exists():
        # FileExistsError: another process materialised it first; it is checked below like any.
        with contextlib.suppress(FileExistsError):
            create_artifact(config, target)
    stored, meta = _read_artifact_config(target)
    if stored != config:
        raise ArtifactError(
            f"{target} was built from a different {config.name!r} config than the registered "
            "one; delete it to rebuild, or pass its path to keep using it"
        )
    if _has_zero_shot_head(config) and zero_shot_spec(target) is None:
        meta = _with_zero_shot_head(config, target, meta)
    if "onnx_file" not in meta:
        from embedder.export import export_if_missing  # torch.onnx loads only to export

        export_if_missing(target)
    return target


def _has_zero_shot_head(config: ModelConfig) -> bool:
    """Whether an artifact built from `config` today comes with a zero-shot head: packaged
    weights carry their ImageNet classifier, and CLIP has its text tower."""
    return config.weight_source[0] == "package" or config.family == "open_clip"


def _with_zero_shot_head(config: ModelConfig, target: Path, meta: dict[str, str]) -> dict[str, str]:
    """Rebuild a registered model that an older nearcat materialised without its zero-shot
    head, and return the new config.json. The head leaves the version as it was, so stored
    vectors stay valid. One process rebuilds while others wait (a lock file beside it); the
    old directory is swapped out only once the new one is complete and has the same version.
    Anything failing (a read-only directory, weights that need a download offline) leaves
    the old artifact in place, served without a text tower as before, with a warning."""
    lock_path = target.with_name(f".{target.name}.lock")
    try:
        with open(lock_path, "a") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            _, meta = _read_artifact_config(target)
            if zero_shot_spec(target) is not None:  # another process rebuilt it meanwhile
                return meta
            log.info("%s predates zero-shot heads: rebuilding it with one", target)
            work = Path(tempfile.mkdtemp(prefix=f".{target.name}.rebuild-", dir=target.parent))
            try:
                fresh = create_artifact(config, work / "artifact")
                _, new = _read_artifact_config(fresh)
                if new["version"] != meta["version"]:
                    raise ArtifactError(
                        f"the rebuild has version {new['version']}, not {meta['version']}"
                    )
                if zero_shot_spec(fresh) is None:
                    raise ArtifactError("the rebuild has no zero-shot head either")
                target.rename(work / "old")
                try:
                    fresh.rename(target)
                except OSError:
                    (work / "old").rename(target)  # back before `work` is deleted with it
                    raise
                return new
            finally:
                shutil.rmtree(work, ignore_errors=True)
    except (OSError, ArtifactError, WeightsError) as exc:
        log.warning("%s has no zero-shot head and was not rebuilt with one: %s", target, exc)
        return meta


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()

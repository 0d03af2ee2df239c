"""Server settings: defaults, overridden by NEARCAT_* environment variables, then by flags."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from embedder.config import DEFAULT_MODEL


class Settings(BaseSettings):
    """Everything `nearcat serve` can be told. Each field is also NEARCAT_<FIELD>."""

    model_config = SettingsConfigDict(env_prefix="NEARCAT_", extra="forbid")

    host: str = Field("127.0.0.1", description="address to listen on (0.0.0.0 for all)")
    port: int = Field(50051, ge=0, le=65535, description="gRPC port; 0 picks a free one")
    data_dir: Path = Field(Path("var"), description="embedded Valkey data and model artifacts")
    redis_url: str | None = Field(
        None, description="external Redis/Valkey, e.g. redis://host:6379/0 (default: embedded)"
    )
    blob_url: str | None = Field(
        None,
        description="where reference images and labelled photos are kept: a directory, "
        "file:///path, or "
        "s3://bucket/prefix (AWS_* environment; pip install 'nearcat[s3]'). Default: the "
        "one the store recorded, else DATA_DIR/blobs. Replicas on several machines need a "
        "shared directory or a bucket",
    )
    vector_dtype: Literal["float32", "float16"] = Field(
        "float32",
        description="how a model version's vectors are kept in the store: float16 halves "
        "their memory at a small recall cost (`nearcat bench store`); a version keeps the "
        "type it was first written with, so this applies from the next reindex",
    )
    store_timeout_s: float = Field(
        1.0,
        gt=0,
        le=60,
        description="how long one store command (and a connect) may take before the store "
        "counts as not answering: its calls then fail with UNAVAILABLE at once until it "
        "answers again, while Classify goes on from memory",
    )
    key_prefix: str = Field("nearcat", description="prefix of every key nearcat writes")
    model: str = Field(
        DEFAULT_MODEL,
        description="registered model name or model artifact directory; serves a new store, "
        "whereas a store that has served before keeps its model until `nearcat reindex`",
    )
    runtime: Literal["auto", "onnx", "torch"] = Field(
        "auto",
        description="what runs the model: onnx (ONNX Runtime, needs the artifact's model.onnx), "
        "torch (PyTorch), auto (onnx when the artifact has a model.onnx)",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto",
        description="where the model runs: cuda (the GPU; runtime auto then picks PyTorch "
        "unless onnxruntime-gpu is installed), cpu, auto (the GPU when the chosen runtime "
        "sees one: ONNX Runtime only with onnxruntime-gpu)",
    )
    k: int = Field(10, ge=1, le=1000, description="nearest references that vote")
    votes_per_category: int = Field(3, ge=1, description="votes counted per category at most")
    vote_temperature: float = Field(0.05, gt=0, description="softness of similarity weights")
    auto_accept_precision: float = Field(
        0.98,
        ge=0.5,
        lt=1,
        description="how often auto-accepted answers must be right: the calibration auto-"
        "accepts from the lowest confidence whose answers on held-out labelled images reach "
        "it (with --auto-accept-confidence); none when the evidence is too thin",
    )
    auto_accept_confidence: float = Field(
        0.9,
        ge=0.5,
        lt=1,
        description="one-sided confidence of the lower bound that must reach "
        "--auto-accept-precision (at 0.9 and 0.98 a band needs at least 114 answers, all right)",
    )
    open_set_share: float = Field(
        0.01,
        ge=0,
        lt=0.5,
        description="share of traffic assumed to belong to no category: the calibration asks "
        "each labelled image again with its category left out, and counts those answers as "
        "errors with this weight, so look-alikes of missing categories are not auto-accepted",
    )
    flag: float = Field(
        0.80,
        ge=0,
        le=1,
        description="probability from which it is accepted but flagged; "
        "below: human review with the top-3",
    )
    auto_accept_uncalibrated: bool = Field(
        False,
        description="auto-accept raw shares at or above --auto-accept-precision before a "
        "calibration was fitted (`nearcat import` or `nearcat calibrate` fits one from 20 "
        "references in 2 categories); raw vote shares are not probabilities, so by default "
        "such answers are at most flagged",
    )
    thresholds_file: Path | None = Field(
        None,
        description='JSON of per-category thresholds, e.g. {"Shoes": {"auto_accept": 0.9}}',
    )
    prompt_weight: float = Field(
        3.0,
        ge=0,
        description="how many reference images a category's text prompts are worth: text "
        "evidence fades as references arrive",
    )
    index_kind: str = Field(
        "auto", pattern="^(auto|flat|ivf)$", description="FAISS index: auto, flat or ivf"
    )
    ivf_threshold: int = Field(
        100_000, ge=1, description="with index-kind auto, references from which IVF is used"
    )
    ivf_nlist: int = Field(0, ge=0, description="IVF lists (0: sqrt(references))")
    ivf_nprobe: int = Field(16, ge=1, description="IVF lists scanned per search")
    max_image_bytes: int = Field(20 * 1024 * 1024, ge=1, description="largest encoded image")
    max_image_pixels: int = Field(50_000_000, ge=1, description="largest width x height")
    max_images_per_request: int = Field(256, ge=1, description="images in one call at most")
    max_message_bytes: int = Field(
        64 * 1024 * 1024,
        ge=1024,
        description="largest gRPC message received; gRPC refuses a larger request with "
        "RESOURCE_EXHAUSTED before nearcat sees it, and nearcat's CLI and console then say "
        "how to split it",
    )
    workers: int = Field(16, ge=1, description="threads serving calls")
    max_batch: int = Field(32, ge=1, description="images the model runs at once at most")
    model_workers: int = Field(
        0,
        ge=0,
        description="model runs side by side, the cores shared out among them; 0: one "
        "single-threaded run per core on a CPU (about a sixth more images/s than one run "
        "over all cores; a lone image ~4 ms slower: 1 gives it the lowest latency), one on a GPU",
    )
    max_wait_ms: float = Field(
        2.0, ge=0, description="how long a batch may wait for callers still decoding"
    )
    grace_seconds: float = Field(15.0, ge=0, description="time in-flight calls get on SIGTERM")
    recalibrate_after_s: float = Field(
        60.0,
        ge=0,
        description="once the categories change (one added, deleted, or given its first "
        "reference) and then stay unchanged this long, refit the calibration and its head "
        "by itself; 0: only `nearcat calibrate` refits",
    )
    default_deadline_s: float = Field(
        60.0, ge=0, description="deadline of calls that come without one, in seconds (0: none)"
    )
    # -- people in the loop: the review queue and the web console --------------------------
    review_flagged: bool = Field(
        False, description="queue FLAG answers for review too (REVIEW and UNKNOWN always are)"
    )
    audit_share: float = Field(
        0.02,
        ge=0,
        le=1,
        description="share of AUTO_ACCEPT answers queued as audits: reviewed, they give the "
        "band's live precision",
    )
    audit_guard: bool = Field(
        False,
        description="stop auto-accepting while the audited precision's lower bound is below "
        "--auto-accept-precision (with enough audits to tell)",
    )
    review_max_items: int = Field(
        10_000, ge=1, description="review items kept at most; the oldest are dropped (counted)"
    )
    review_max_age_s: float = Field(
        7 * 24 * 3600.0, gt=0, description="review items older than this are dropped (counted)"
    )
    review_lease_s: float = Field(
        300.0, gt=0, description="how long a claimed review item stays with its reviewer"
    )
    learn_from_reviews: bool = Field(
        True,
        description="a verdict that corrects the model, or confirms an unsure answer, adds the "
        "image as a reference of the confirmed category",
    )
    console_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="serve the web console at http://HOST:PORT (off unless set; 0 picks a "
        "free port); `make run` turns it on at 8080",
    )
    # -- reindex ---------------------------------------------------------------------------
    reindex_max_accuracy_drop: float = Field(
        0.02,
        ge=0,
        le=1,
        description="a reindex refuses to switch when the new model's top-1 on the same held-"
        "out examples (labelled photos, else leave-one-shoot-out) is lower by more than this "
        "(0.02: two points)",
    )
    reindex_batch: int = Field(
        32, ge=1, description="references a reindex embeds and stores per step"
    )
    reindex_validation_examples: int = Field(
        2000, ge=10, description="references sampled to validate a reindex"
    )
    reindex_group_by: str = Field(
        "group",
        description="reference metadata key whose references must not vote for each other "
        "when a reindex is validated ('' for none)",
    )
    # -- operating: logs, metrics, auth, TLS, rate limits ----------------------------------
    log_format: Literal["json", "text"] = Field(
        "json", description="server log lines: json (one object a line) or text"
    )
    metrics_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="serve Prometheus metrics at http://HOST:PORT/metrics (off unless set; "
        "0 picks a free port)",
    )
    drift_window: int = Field(
        1000, ge=1, description="predictions in the drift baseline and in the recent window"
    )
    auth_tokens_file: Path | None = Field(
        None,
        description="turn auth on with this file of 'ROLE TOKEN [NAME]' lines, ROLE classify, "
        "reviewer or admin",
    )
    auth_tokens: str | None = Field(
        None,
        description="turn auth on with comma-separated 'ROLE TOKEN [NAME]' entries; prefer "
        "the env var or the file, as flags show in `ps`",
    )
    tls_cert: Path | None = Field(None, description="PEM server certificate: serve TLS")
    tls_key: Path | None = Field(None, description="PEM key of --tls-cert")
    tls_client_ca: Path | None = Field(
        None, description="PEM CA: mutual TLS, clients must show a certificate it signed"
    )
    rate_limit: float = Field(
        0.0, ge=0, description="calls per second per client (token name, else IP); 0: no limit"
    )
    rate_burst: float = Field(
        20.0, ge=1, description="calls a client may make at once before --rate-limit applies"
    )

    @model_validator(mode="after")
    def _tls_files_go_together(self) -> Settings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("--tls-cert and --tls-key go together: give both or neither")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key")
        if self.tls_client_ca is not None and self.console_port is not None:
            raise ValueError(
                "the web console (--console-port) talks to this server as a client without a "
                "certificate, so it cannot run with mutual TLS (--tls-client-ca): drop one"
            )
        return self

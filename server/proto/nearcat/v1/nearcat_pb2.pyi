from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Decision(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DECISION_UNSPECIFIED: _ClassVar[Decision]
    AUTO_ACCEPT: _ClassVar[Decision]
    FLAG: _ClassVar[Decision]
    REVIEW: _ClassVar[Decision]
    UNKNOWN: _ClassVar[Decision]

class ReindexState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REINDEX_STATE_NONE: _ClassVar[ReindexState]
    REINDEX_RUNNING: _ClassVar[ReindexState]
    REINDEX_VALIDATING: _ClassVar[ReindexState]
    REINDEX_DONE: _ClassVar[ReindexState]
    REINDEX_REFUSED: _ClassVar[ReindexState]
    REINDEX_FAILED: _ClassVar[ReindexState]
DECISION_UNSPECIFIED: Decision
AUTO_ACCEPT: Decision
FLAG: Decision
REVIEW: Decision
UNKNOWN: Decision
REINDEX_STATE_NONE: ReindexState
REINDEX_RUNNING: ReindexState
REINDEX_VALIDATING: ReindexState
REINDEX_DONE: ReindexState
REINDEX_REFUSED: ReindexState
REINDEX_FAILED: ReindexState

class ClassifyOptions(_message.Message):
    __slots__ = ("top_n", "k")
    TOP_N_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    top_n: int
    k: int
    def __init__(self, top_n: _Optional[int] = ..., k: _Optional[int] = ...) -> None: ...

class ClassifyRequest(_message.Message):
    __slots__ = ("image", "options")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    options: ClassifyOptions
    def __init__(self, image: _Optional[bytes] = ..., options: _Optional[_Union[ClassifyOptions, _Mapping]] = ...) -> None: ...

class CategoryScore(_message.Message):
    __slots__ = ("category", "score", "path")
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    category: str
    score: float
    path: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, category: _Optional[str] = ..., score: _Optional[float] = ..., path: _Optional[_Iterable[str]] = ...) -> None: ...

class Neighbor(_message.Message):
    __slots__ = ("reference_id", "category", "similarity")
    REFERENCE_ID_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    reference_id: str
    category: str
    similarity: float
    def __init__(self, reference_id: _Optional[str] = ..., category: _Optional[str] = ..., similarity: _Optional[float] = ...) -> None: ...

class LevelScore(_message.Message):
    __slots__ = ("depth", "category", "score")
    DEPTH_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    depth: int
    category: str
    score: float
    def __init__(self, depth: _Optional[int] = ..., category: _Optional[str] = ..., score: _Optional[float] = ...) -> None: ...

class Classification(_message.Message):
    __slots__ = ("categories", "neighbors", "decision", "confidence", "levels", "confident_ancestor")
    CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    NEIGHBORS_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    LEVELS_FIELD_NUMBER: _ClassVar[int]
    CONFIDENT_ANCESTOR_FIELD_NUMBER: _ClassVar[int]
    categories: _containers.RepeatedCompositeFieldContainer[CategoryScore]
    neighbors: _containers.RepeatedCompositeFieldContainer[Neighbor]
    decision: Decision
    confidence: float
    levels: _containers.RepeatedCompositeFieldContainer[LevelScore]
    confident_ancestor: LevelScore
    def __init__(self, categories: _Optional[_Iterable[_Union[CategoryScore, _Mapping]]] = ..., neighbors: _Optional[_Iterable[_Union[Neighbor, _Mapping]]] = ..., decision: _Optional[_Union[Decision, str]] = ..., confidence: _Optional[float] = ..., levels: _Optional[_Iterable[_Union[LevelScore, _Mapping]]] = ..., confident_ancestor: _Optional[_Union[LevelScore, _Mapping]] = ...) -> None: ...

class ClassifyResponse(_message.Message):
    __slots__ = ("classification", "model_version", "processing_ms")
    CLASSIFICATION_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    PROCESSING_MS_FIELD_NUMBER: _ClassVar[int]
    classification: Classification
    model_version: str
    processing_ms: float
    def __init__(self, classification: _Optional[_Union[Classification, _Mapping]] = ..., model_version: _Optional[str] = ..., processing_ms: _Optional[float] = ...) -> None: ...

class ClassifyBatchRequest(_message.Message):
    __slots__ = ("images", "options")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedScalarFieldContainer[bytes]
    options: ClassifyOptions
    def __init__(self, images: _Optional[_Iterable[bytes]] = ..., options: _Optional[_Union[ClassifyOptions, _Mapping]] = ...) -> None: ...

class ItemError(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class ClassifyBatchItem(_message.Message):
    __slots__ = ("classification", "error")
    CLASSIFICATION_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    classification: Classification
    error: ItemError
    def __init__(self, classification: _Optional[_Union[Classification, _Mapping]] = ..., error: _Optional[_Union[ItemError, _Mapping]] = ...) -> None: ...

class ClassifyBatchResponse(_message.Message):
    __slots__ = ("results", "model_version", "processing_ms")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    PROCESSING_MS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[ClassifyBatchItem]
    model_version: str
    processing_ms: float
    def __init__(self, results: _Optional[_Iterable[_Union[ClassifyBatchItem, _Mapping]]] = ..., model_version: _Optional[str] = ..., processing_ms: _Optional[float] = ...) -> None: ...

class ReferenceImage(_message.Message):
    __slots__ = ("image", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, image: _Optional[bytes] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Category(_message.Message):
    __slots__ = ("name", "parent", "metadata", "created_at_ms", "reference_count", "path", "prompts")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    PARENT_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_COUNT_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    PROMPTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    parent: str
    metadata: _containers.ScalarMap[str, str]
    created_at_ms: int
    reference_count: int
    path: _containers.RepeatedScalarFieldContainer[str]
    prompts: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., parent: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ..., created_at_ms: _Optional[int] = ..., reference_count: _Optional[int] = ..., path: _Optional[_Iterable[str]] = ..., prompts: _Optional[_Iterable[str]] = ...) -> None: ...

class Reference(_message.Message):
    __slots__ = ("id", "category", "sha256", "metadata", "created_at_ms")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    id: str
    category: str
    sha256: str
    metadata: _containers.ScalarMap[str, str]
    created_at_ms: int
    def __init__(self, id: _Optional[str] = ..., category: _Optional[str] = ..., sha256: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ..., created_at_ms: _Optional[int] = ...) -> None: ...

class AddedReference(_message.Message):
    __slots__ = ("reference_id", "sha256", "duplicate")
    REFERENCE_ID_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    reference_id: str
    sha256: str
    duplicate: bool
    def __init__(self, reference_id: _Optional[str] = ..., sha256: _Optional[str] = ..., duplicate: _Optional[bool] = ...) -> None: ...

class AddCategoryRequest(_message.Message):
    __slots__ = ("name", "parent", "metadata", "references", "prompts")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    PARENT_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    REFERENCES_FIELD_NUMBER: _ClassVar[int]
    PROMPTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    parent: str
    metadata: _containers.ScalarMap[str, str]
    references: _containers.RepeatedCompositeFieldContainer[ReferenceImage]
    prompts: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., parent: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ..., references: _Optional[_Iterable[_Union[ReferenceImage, _Mapping]]] = ..., prompts: _Optional[_Iterable[str]] = ...) -> None: ...

class AddCategoryResponse(_message.Message):
    __slots__ = ("category", "references")
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    REFERENCES_FIELD_NUMBER: _ClassVar[int]
    category: Category
    references: _containers.RepeatedCompositeFieldContainer[AddedReference]
    def __init__(self, category: _Optional[_Union[Category, _Mapping]] = ..., references: _Optional[_Iterable[_Union[AddedReference, _Mapping]]] = ...) -> None: ...

class AddReferencesRequest(_message.Message):
    __slots__ = ("category", "references")
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    REFERENCES_FIELD_NUMBER: _ClassVar[int]
    category: str
    references: _containers.RepeatedCompositeFieldContainer[ReferenceImage]
    def __init__(self, category: _Optional[str] = ..., references: _Optional[_Iterable[_Union[ReferenceImage, _Mapping]]] = ...) -> None: ...

class AddReferencesResponse(_message.Message):
    __slots__ = ("category", "references", "added", "duplicates")
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    REFERENCES_FIELD_NUMBER: _ClassVar[int]
    ADDED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    category: Category
    references: _containers.RepeatedCompositeFieldContainer[AddedReference]
    added: int
    duplicates: int
    def __init__(self, category: _Optional[_Union[Category, _Mapping]] = ..., references: _Optional[_Iterable[_Union[AddedReference, _Mapping]]] = ..., added: _Optional[int] = ..., duplicates: _Optional[int] = ...) -> None: ...

class RemoveReferencesRequest(_message.Message):
    __slots__ = ("reference_ids",)
    REFERENCE_IDS_FIELD_NUMBER: _ClassVar[int]
    reference_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, reference_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class RemoveReferencesResponse(_message.Message):
    __slots__ = ("removed",)
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    removed: int
    def __init__(self, removed: _Optional[int] = ...) -> None: ...

class DeleteCategoryRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteCategoryResponse(_message.Message):
    __slots__ = ("references_removed",)
    REFERENCES_REMOVED_FIELD_NUMBER: _ClassVar[int]
    references_removed: int
    def __init__(self, references_removed: _Optional[int] = ...) -> None: ...

class ListCategoriesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListCategoriesResponse(_message.Message):
    __slots__ = ("categories",)
    CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    categories: _containers.RepeatedCompositeFieldContainer[Category]
    def __init__(self, categories: _Optional[_Iterable[_Union[Category, _Mapping]]] = ...) -> None: ...

class GetCategoryRequest(_message.Message):
    __slots__ = ("name", "include_references")
    NAME_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_REFERENCES_FIELD_NUMBER: _ClassVar[int]
    name: str
    include_references: bool
    def __init__(self, name: _Optional[str] = ..., include_references: _Optional[bool] = ...) -> None: ...

class GetCategoryResponse(_message.Message):
    __slots__ = ("category", "references")
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    REFERENCES_FIELD_NUMBER: _ClassVar[int]
    category: Category
    references: _containers.RepeatedCompositeFieldContainer[Reference]
    def __init__(self, category: _Optional[_Union[Category, _Mapping]] = ..., references: _Optional[_Iterable[_Union[Reference, _Mapping]]] = ...) -> None: ...

class ZeroShotRequest(_message.Message):
    __slots__ = ("image", "labels")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    labels: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, image: _Optional[bytes] = ..., labels: _Optional[_Iterable[str]] = ...) -> None: ...

class LabelScore(_message.Message):
    __slots__ = ("label", "score")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    label: str
    score: float
    def __init__(self, label: _Optional[str] = ..., score: _Optional[float] = ...) -> None: ...

class ZeroShotResponse(_message.Message):
    __slots__ = ("labels", "model_version")
    LABELS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    labels: _containers.RepeatedCompositeFieldContainer[LabelScore]
    model_version: str
    def __init__(self, labels: _Optional[_Iterable[_Union[LabelScore, _Mapping]]] = ..., model_version: _Optional[str] = ...) -> None: ...

class SearchByTextRequest(_message.Message):
    __slots__ = ("text", "top_n", "k")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOP_N_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    text: str
    top_n: int
    k: int
    def __init__(self, text: _Optional[str] = ..., top_n: _Optional[int] = ..., k: _Optional[int] = ...) -> None: ...

class SearchByTextResponse(_message.Message):
    __slots__ = ("categories", "references", "model_version")
    CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    REFERENCES_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    categories: _containers.RepeatedCompositeFieldContainer[CategoryScore]
    references: _containers.RepeatedCompositeFieldContainer[Neighbor]
    model_version: str
    def __init__(self, categories: _Optional[_Iterable[_Union[CategoryScore, _Mapping]]] = ..., references: _Optional[_Iterable[_Union[Neighbor, _Mapping]]] = ..., model_version: _Optional[str] = ...) -> None: ...

class CalibrateRequest(_message.Message):
    __slots__ = ("group_by_metadata",)
    GROUP_BY_METADATA_FIELD_NUMBER: _ClassVar[int]
    group_by_metadata: str
    def __init__(self, group_by_metadata: _Optional[str] = ...) -> None: ...

class Calibration(_message.Message):
    __slots__ = ("temperature", "unknown_below", "examples", "ece_before", "ece_after", "source", "fitted_at_ms", "accuracy", "head_categories", "head_current", "has_auto_accept", "auto_accept_threshold", "target_precision", "bound_level", "precision_bound", "accepted_share", "no_auto_accept_reason", "labelled_needed")
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    UNKNOWN_BELOW_FIELD_NUMBER: _ClassVar[int]
    EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    ECE_BEFORE_FIELD_NUMBER: _ClassVar[int]
    ECE_AFTER_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    FITTED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    HEAD_CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    HEAD_CURRENT_FIELD_NUMBER: _ClassVar[int]
    HAS_AUTO_ACCEPT_FIELD_NUMBER: _ClassVar[int]
    AUTO_ACCEPT_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    TARGET_PRECISION_FIELD_NUMBER: _ClassVar[int]
    BOUND_LEVEL_FIELD_NUMBER: _ClassVar[int]
    PRECISION_BOUND_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_SHARE_FIELD_NUMBER: _ClassVar[int]
    NO_AUTO_ACCEPT_REASON_FIELD_NUMBER: _ClassVar[int]
    LABELLED_NEEDED_FIELD_NUMBER: _ClassVar[int]
    temperature: float
    unknown_below: float
    examples: int
    ece_before: float
    ece_after: float
    source: str
    fitted_at_ms: int
    accuracy: float
    head_categories: int
    head_current: bool
    has_auto_accept: bool
    auto_accept_threshold: float
    target_precision: float
    bound_level: float
    precision_bound: float
    accepted_share: float
    no_auto_accept_reason: str
    labelled_needed: int
    def __init__(self, temperature: _Optional[float] = ..., unknown_below: _Optional[float] = ..., examples: _Optional[int] = ..., ece_before: _Optional[float] = ..., ece_after: _Optional[float] = ..., source: _Optional[str] = ..., fitted_at_ms: _Optional[int] = ..., accuracy: _Optional[float] = ..., head_categories: _Optional[int] = ..., head_current: _Optional[bool] = ..., has_auto_accept: _Optional[bool] = ..., auto_accept_threshold: _Optional[float] = ..., target_precision: _Optional[float] = ..., bound_level: _Optional[float] = ..., precision_bound: _Optional[float] = ..., accepted_share: _Optional[float] = ..., no_auto_accept_reason: _Optional[str] = ..., labelled_needed: _Optional[int] = ...) -> None: ...

class LabelledImage(_message.Message):
    __slots__ = ("image", "category")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    category: str
    def __init__(self, image: _Optional[bytes] = ..., category: _Optional[str] = ...) -> None: ...

class AddLabelledRequest(_message.Message):
    __slots__ = ("images", "source")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedCompositeFieldContainer[LabelledImage]
    source: str
    def __init__(self, images: _Optional[_Iterable[_Union[LabelledImage, _Mapping]]] = ..., source: _Optional[str] = ...) -> None: ...

class AddLabelledResponse(_message.Message):
    __slots__ = ("added", "total")
    ADDED_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    added: int
    total: int
    def __init__(self, added: _Optional[int] = ..., total: _Optional[int] = ...) -> None: ...

class CalibrateResponse(_message.Message):
    __slots__ = ("calibration",)
    CALIBRATION_FIELD_NUMBER: _ClassVar[int]
    calibration: Calibration
    def __init__(self, calibration: _Optional[_Union[Calibration, _Mapping]] = ...) -> None: ...

class GetStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetStatusResponse(_message.Message):
    __slots__ = ("model_version", "embedding_dim", "index_size", "category_count", "images_embedded", "vectors_loaded_at_start", "started_at_ms", "calibration", "text_model", "drift")
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_DIM_FIELD_NUMBER: _ClassVar[int]
    INDEX_SIZE_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_COUNT_FIELD_NUMBER: _ClassVar[int]
    IMAGES_EMBEDDED_FIELD_NUMBER: _ClassVar[int]
    VECTORS_LOADED_AT_START_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    CALIBRATION_FIELD_NUMBER: _ClassVar[int]
    TEXT_MODEL_FIELD_NUMBER: _ClassVar[int]
    DRIFT_FIELD_NUMBER: _ClassVar[int]
    model_version: str
    embedding_dim: int
    index_size: int
    category_count: int
    images_embedded: int
    vectors_loaded_at_start: int
    started_at_ms: int
    calibration: Calibration
    text_model: str
    drift: DriftStatus
    def __init__(self, model_version: _Optional[str] = ..., embedding_dim: _Optional[int] = ..., index_size: _Optional[int] = ..., category_count: _Optional[int] = ..., images_embedded: _Optional[int] = ..., vectors_loaded_at_start: _Optional[int] = ..., started_at_ms: _Optional[int] = ..., calibration: _Optional[_Union[Calibration, _Mapping]] = ..., text_model: _Optional[str] = ..., drift: _Optional[_Union[DriftStatus, _Mapping]] = ...) -> None: ...

class DriftStatus(_message.Message):
    __slots__ = ("window", "baseline_size", "recent_size", "ready", "category_psi", "confidence_psi")
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    BASELINE_SIZE_FIELD_NUMBER: _ClassVar[int]
    RECENT_SIZE_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_PSI_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_PSI_FIELD_NUMBER: _ClassVar[int]
    window: int
    baseline_size: int
    recent_size: int
    ready: bool
    category_psi: float
    confidence_psi: float
    def __init__(self, window: _Optional[int] = ..., baseline_size: _Optional[int] = ..., recent_size: _Optional[int] = ..., ready: _Optional[bool] = ..., category_psi: _Optional[float] = ..., confidence_psi: _Optional[float] = ...) -> None: ...

class ReindexRequest(_message.Message):
    __slots__ = ("model", "max_accuracy_drop", "skip_validation", "metrics_json")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MAX_ACCURACY_DROP_FIELD_NUMBER: _ClassVar[int]
    SKIP_VALIDATION_FIELD_NUMBER: _ClassVar[int]
    METRICS_JSON_FIELD_NUMBER: _ClassVar[int]
    model: str
    max_accuracy_drop: float
    skip_validation: bool
    metrics_json: str
    def __init__(self, model: _Optional[str] = ..., max_accuracy_drop: _Optional[float] = ..., skip_validation: _Optional[bool] = ..., metrics_json: _Optional[str] = ...) -> None: ...

class GetReindexStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RollbackRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReindexStatus(_message.Message):
    __slots__ = ("state", "target_version", "previous_version", "active_version", "done", "total", "resumed_from", "started_at_ms", "finished_at_ms", "message", "validated", "accuracy_before", "accuracy_after", "validation_examples", "max_accuracy_drop", "rollback")
    STATE_FIELD_NUMBER: _ClassVar[int]
    TARGET_VERSION_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_VERSION_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_VERSION_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    RESUMED_FROM_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    VALIDATED_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_BEFORE_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_AFTER_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    MAX_ACCURACY_DROP_FIELD_NUMBER: _ClassVar[int]
    ROLLBACK_FIELD_NUMBER: _ClassVar[int]
    state: ReindexState
    target_version: str
    previous_version: str
    active_version: str
    done: int
    total: int
    resumed_from: int
    started_at_ms: int
    finished_at_ms: int
    message: str
    validated: bool
    accuracy_before: float
    accuracy_after: float
    validation_examples: int
    max_accuracy_drop: float
    rollback: bool
    def __init__(self, state: _Optional[_Union[ReindexState, str]] = ..., target_version: _Optional[str] = ..., previous_version: _Optional[str] = ..., active_version: _Optional[str] = ..., done: _Optional[int] = ..., total: _Optional[int] = ..., resumed_from: _Optional[int] = ..., started_at_ms: _Optional[int] = ..., finished_at_ms: _Optional[int] = ..., message: _Optional[str] = ..., validated: _Optional[bool] = ..., accuracy_before: _Optional[float] = ..., accuracy_after: _Optional[float] = ..., validation_examples: _Optional[int] = ..., max_accuracy_drop: _Optional[float] = ..., rollback: _Optional[bool] = ...) -> None: ...

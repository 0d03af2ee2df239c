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
    __slots__ = ("top_n", "k", "within")
    TOP_N_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    WITHIN_FIELD_NUMBER: _ClassVar[int]
    top_n: int
    k: int
    within: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, top_n: _Optional[int] = ..., k: _Optional[int] = ..., within: _Optional[_Iterable[str]] = ...) -> None: ...

class ClassifyRequest(_message.Message):
    __slots__ = ("image", "options", "item_id", "metadata", "skip_review")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    SKIP_REVIEW_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    options: ClassifyOptions
    item_id: str
    metadata: _containers.ScalarMap[str, str]
    skip_review: bool
    def __init__(self, image: _Optional[bytes] = ..., options: _Optional[_Union[ClassifyOptions, _Mapping]] = ..., item_id: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ..., skip_review: _Optional[bool] = ...) -> None: ...

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
    __slots__ = ("categories", "neighbors", "decision", "confidence", "levels", "confident_ancestor", "attributes")
    CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    NEIGHBORS_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    LEVELS_FIELD_NUMBER: _ClassVar[int]
    CONFIDENT_ANCESTOR_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    categories: _containers.RepeatedCompositeFieldContainer[CategoryScore]
    neighbors: _containers.RepeatedCompositeFieldContainer[Neighbor]
    decision: Decision
    confidence: float
    levels: _containers.RepeatedCompositeFieldContainer[LevelScore]
    confident_ancestor: LevelScore
    attributes: _containers.RepeatedCompositeFieldContainer[AttributeScore]
    def __init__(self, categories: _Optional[_Iterable[_Union[CategoryScore, _Mapping]]] = ..., neighbors: _Optional[_Iterable[_Union[Neighbor, _Mapping]]] = ..., decision: _Optional[_Union[Decision, str]] = ..., confidence: _Optional[float] = ..., levels: _Optional[_Iterable[_Union[LevelScore, _Mapping]]] = ..., confident_ancestor: _Optional[_Union[LevelScore, _Mapping]] = ..., attributes: _Optional[_Iterable[_Union[AttributeScore, _Mapping]]] = ...) -> None: ...

class AttributeScore(_message.Message):
    __slots__ = ("name", "values", "voters")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    VOTERS_FIELD_NUMBER: _ClassVar[int]
    name: str
    values: _containers.RepeatedCompositeFieldContainer[AttributeValue]
    voters: int
    def __init__(self, name: _Optional[str] = ..., values: _Optional[_Iterable[_Union[AttributeValue, _Mapping]]] = ..., voters: _Optional[int] = ...) -> None: ...

class AttributeValue(_message.Message):
    __slots__ = ("value", "probability")
    VALUE_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    value: str
    probability: float
    def __init__(self, value: _Optional[str] = ..., probability: _Optional[float] = ...) -> None: ...

class ClassifyResponse(_message.Message):
    __slots__ = ("classification", "model_version", "processing_ms", "item_id", "metadata", "review_id", "review_unqueued")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CLASSIFICATION_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    PROCESSING_MS_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    REVIEW_ID_FIELD_NUMBER: _ClassVar[int]
    REVIEW_UNQUEUED_FIELD_NUMBER: _ClassVar[int]
    classification: Classification
    model_version: str
    processing_ms: float
    item_id: str
    metadata: _containers.ScalarMap[str, str]
    review_id: str
    review_unqueued: str
    def __init__(self, classification: _Optional[_Union[Classification, _Mapping]] = ..., model_version: _Optional[str] = ..., processing_ms: _Optional[float] = ..., item_id: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ..., review_id: _Optional[str] = ..., review_unqueued: _Optional[str] = ...) -> None: ...

class ClassifyItem(_message.Message):
    __slots__ = ("image", "item_id", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    item_id: str
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, image: _Optional[bytes] = ..., item_id: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ClassifyBatchRequest(_message.Message):
    __slots__ = ("images", "options", "items", "skip_review")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    SKIP_REVIEW_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedScalarFieldContainer[bytes]
    options: ClassifyOptions
    items: _containers.RepeatedCompositeFieldContainer[ClassifyItem]
    skip_review: bool
    def __init__(self, images: _Optional[_Iterable[bytes]] = ..., options: _Optional[_Union[ClassifyOptions, _Mapping]] = ..., items: _Optional[_Iterable[_Union[ClassifyItem, _Mapping]]] = ..., skip_review: _Optional[bool] = ...) -> None: ...

class ItemError(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class ClassifyBatchItem(_message.Message):
    __slots__ = ("classification", "error", "item_id", "metadata", "review_id", "review_unqueued")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CLASSIFICATION_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    REVIEW_ID_FIELD_NUMBER: _ClassVar[int]
    REVIEW_UNQUEUED_FIELD_NUMBER: _ClassVar[int]
    classification: Classification
    error: ItemError
    item_id: str
    metadata: _containers.ScalarMap[str, str]
    review_id: str
    review_unqueued: str
    def __init__(self, classification: _Optional[_Union[Classification, _Mapping]] = ..., error: _Optional[_Union[ItemError, _Mapping]] = ..., item_id: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ..., review_id: _Optional[str] = ..., review_unqueued: _Optional[str] = ...) -> None: ...

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
    __slots__ = ("image", "metadata", "attributes")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    metadata: _containers.ScalarMap[str, str]
    attributes: _containers.ScalarMap[str, str]
    def __init__(self, image: _Optional[bytes] = ..., metadata: _Optional[_Mapping[str, str]] = ..., attributes: _Optional[_Mapping[str, str]] = ...) -> None: ...

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
    __slots__ = ("id", "category", "sha256", "metadata", "created_at_ms", "attributes")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class AttributesEntry(_message.Message):
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
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    id: str
    category: str
    sha256: str
    metadata: _containers.ScalarMap[str, str]
    created_at_ms: int
    attributes: _containers.ScalarMap[str, str]
    def __init__(self, id: _Optional[str] = ..., category: _Optional[str] = ..., sha256: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ..., created_at_ms: _Optional[int] = ..., attributes: _Optional[_Mapping[str, str]] = ...) -> None: ...

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
    __slots__ = ("name", "include_references", "offset", "limit")
    NAME_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_REFERENCES_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    name: str
    include_references: bool
    offset: int
    limit: int
    def __init__(self, name: _Optional[str] = ..., include_references: _Optional[bool] = ..., offset: _Optional[int] = ..., limit: _Optional[int] = ...) -> None: ...

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
    __slots__ = ("temperature", "unknown_below", "examples", "ece_before", "ece_after", "source", "fitted_at_ms", "accuracy", "head_categories", "head_current", "has_auto_accept", "auto_accept_threshold", "target_precision", "bound_level", "precision_bound", "accepted_share", "no_auto_accept_reason", "labelled_needed", "attributes")
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
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
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
    attributes: _containers.RepeatedCompositeFieldContainer[AttributeFit]
    def __init__(self, temperature: _Optional[float] = ..., unknown_below: _Optional[float] = ..., examples: _Optional[int] = ..., ece_before: _Optional[float] = ..., ece_after: _Optional[float] = ..., source: _Optional[str] = ..., fitted_at_ms: _Optional[int] = ..., accuracy: _Optional[float] = ..., head_categories: _Optional[int] = ..., head_current: _Optional[bool] = ..., has_auto_accept: _Optional[bool] = ..., auto_accept_threshold: _Optional[float] = ..., target_precision: _Optional[float] = ..., bound_level: _Optional[float] = ..., precision_bound: _Optional[float] = ..., accepted_share: _Optional[float] = ..., no_auto_accept_reason: _Optional[str] = ..., labelled_needed: _Optional[int] = ..., attributes: _Optional[_Iterable[_Union[AttributeFit, _Mapping]]] = ...) -> None: ...

class AttributeFit(_message.Message):
    __slots__ = ("name", "temperature", "examples", "accuracy", "ece_before", "ece_after", "source")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    ECE_BEFORE_FIELD_NUMBER: _ClassVar[int]
    ECE_AFTER_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    name: str
    temperature: float
    examples: int
    accuracy: float
    ece_before: float
    ece_after: float
    source: str
    def __init__(self, name: _Optional[str] = ..., temperature: _Optional[float] = ..., examples: _Optional[int] = ..., accuracy: _Optional[float] = ..., ece_before: _Optional[float] = ..., ece_after: _Optional[float] = ..., source: _Optional[str] = ...) -> None: ...

class LabelledImage(_message.Message):
    __slots__ = ("image", "category", "attributes")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    category: str
    attributes: _containers.ScalarMap[str, str]
    def __init__(self, image: _Optional[bytes] = ..., category: _Optional[str] = ..., attributes: _Optional[_Mapping[str, str]] = ...) -> None: ...

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
    __slots__ = ("model_version", "embedding_dim", "index_size", "category_count", "images_embedded", "vectors_loaded_at_start", "started_at_ms", "calibration", "text_model", "drift", "review", "server_id", "change_position", "change_lag", "change_lag_seconds")
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
    REVIEW_FIELD_NUMBER: _ClassVar[int]
    SERVER_ID_FIELD_NUMBER: _ClassVar[int]
    CHANGE_POSITION_FIELD_NUMBER: _ClassVar[int]
    CHANGE_LAG_FIELD_NUMBER: _ClassVar[int]
    CHANGE_LAG_SECONDS_FIELD_NUMBER: _ClassVar[int]
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
    review: ReviewStats
    server_id: str
    change_position: str
    change_lag: int
    change_lag_seconds: float
    def __init__(self, model_version: _Optional[str] = ..., embedding_dim: _Optional[int] = ..., index_size: _Optional[int] = ..., category_count: _Optional[int] = ..., images_embedded: _Optional[int] = ..., vectors_loaded_at_start: _Optional[int] = ..., started_at_ms: _Optional[int] = ..., calibration: _Optional[_Union[Calibration, _Mapping]] = ..., text_model: _Optional[str] = ..., drift: _Optional[_Union[DriftStatus, _Mapping]] = ..., review: _Optional[_Union[ReviewStats, _Mapping]] = ..., server_id: _Optional[str] = ..., change_position: _Optional[str] = ..., change_lag: _Optional[int] = ..., change_lag_seconds: _Optional[float] = ...) -> None: ...

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
    __slots__ = ("model", "max_accuracy_drop", "skip_validation", "metrics_json", "engine", "ray_address", "ray_workers", "ray_cpus_per_worker", "ray_gpus_per_worker")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MAX_ACCURACY_DROP_FIELD_NUMBER: _ClassVar[int]
    SKIP_VALIDATION_FIELD_NUMBER: _ClassVar[int]
    METRICS_JSON_FIELD_NUMBER: _ClassVar[int]
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    RAY_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    RAY_WORKERS_FIELD_NUMBER: _ClassVar[int]
    RAY_CPUS_PER_WORKER_FIELD_NUMBER: _ClassVar[int]
    RAY_GPUS_PER_WORKER_FIELD_NUMBER: _ClassVar[int]
    model: str
    max_accuracy_drop: float
    skip_validation: bool
    metrics_json: str
    engine: str
    ray_address: str
    ray_workers: int
    ray_cpus_per_worker: float
    ray_gpus_per_worker: float
    def __init__(self, model: _Optional[str] = ..., max_accuracy_drop: _Optional[float] = ..., skip_validation: _Optional[bool] = ..., metrics_json: _Optional[str] = ..., engine: _Optional[str] = ..., ray_address: _Optional[str] = ..., ray_workers: _Optional[int] = ..., ray_cpus_per_worker: _Optional[float] = ..., ray_gpus_per_worker: _Optional[float] = ...) -> None: ...

class GetReindexStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RollbackRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReindexStatus(_message.Message):
    __slots__ = ("state", "target_version", "previous_version", "active_version", "done", "total", "resumed_from", "started_at_ms", "finished_at_ms", "message", "validated", "accuracy_before", "accuracy_after", "validation_examples", "max_accuracy_drop", "rollback", "engine")
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
    ENGINE_FIELD_NUMBER: _ClassVar[int]
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
    engine: str
    def __init__(self, state: _Optional[_Union[ReindexState, str]] = ..., target_version: _Optional[str] = ..., previous_version: _Optional[str] = ..., active_version: _Optional[str] = ..., done: _Optional[int] = ..., total: _Optional[int] = ..., resumed_from: _Optional[int] = ..., started_at_ms: _Optional[int] = ..., finished_at_ms: _Optional[int] = ..., message: _Optional[str] = ..., validated: _Optional[bool] = ..., accuracy_before: _Optional[float] = ..., accuracy_after: _Optional[float] = ..., validation_examples: _Optional[int] = ..., max_accuracy_drop: _Optional[float] = ..., rollback: _Optional[bool] = ..., engine: _Optional[str] = ...) -> None: ...

class UpdateCategoryRequest(_message.Message):
    __slots__ = ("name", "new_name", "parent", "set_prompts", "prompts", "set_metadata", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    NEW_NAME_FIELD_NUMBER: _ClassVar[int]
    PARENT_FIELD_NUMBER: _ClassVar[int]
    SET_PROMPTS_FIELD_NUMBER: _ClassVar[int]
    PROMPTS_FIELD_NUMBER: _ClassVar[int]
    SET_METADATA_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    name: str
    new_name: str
    parent: str
    set_prompts: bool
    prompts: _containers.RepeatedScalarFieldContainer[str]
    set_metadata: bool
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, name: _Optional[str] = ..., new_name: _Optional[str] = ..., parent: _Optional[str] = ..., set_prompts: _Optional[bool] = ..., prompts: _Optional[_Iterable[str]] = ..., set_metadata: _Optional[bool] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class UpdateCategoryResponse(_message.Message):
    __slots__ = ("category",)
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    category: Category
    def __init__(self, category: _Optional[_Union[Category, _Mapping]] = ...) -> None: ...

class GetReferenceImageRequest(_message.Message):
    __slots__ = ("reference_id",)
    REFERENCE_ID_FIELD_NUMBER: _ClassVar[int]
    reference_id: str
    def __init__(self, reference_id: _Optional[str] = ...) -> None: ...

class GetReferenceImageResponse(_message.Message):
    __slots__ = ("image", "reference")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    reference: Reference
    def __init__(self, image: _Optional[bytes] = ..., reference: _Optional[_Union[Reference, _Mapping]] = ...) -> None: ...

class ReviewItem(_message.Message):
    __slots__ = ("id", "image", "classification", "model_version", "request_id", "created_at_ms", "item_id", "metadata", "audit", "leased_to", "lease_until_ms")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    CLASSIFICATION_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    AUDIT_FIELD_NUMBER: _ClassVar[int]
    LEASED_TO_FIELD_NUMBER: _ClassVar[int]
    LEASE_UNTIL_MS_FIELD_NUMBER: _ClassVar[int]
    id: str
    image: bytes
    classification: Classification
    model_version: str
    request_id: str
    created_at_ms: int
    item_id: str
    metadata: _containers.ScalarMap[str, str]
    audit: bool
    leased_to: str
    lease_until_ms: int
    def __init__(self, id: _Optional[str] = ..., image: _Optional[bytes] = ..., classification: _Optional[_Union[Classification, _Mapping]] = ..., model_version: _Optional[str] = ..., request_id: _Optional[str] = ..., created_at_ms: _Optional[int] = ..., item_id: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ..., audit: _Optional[bool] = ..., leased_to: _Optional[str] = ..., lease_until_ms: _Optional[int] = ...) -> None: ...

class ClaimReviewsRequest(_message.Message):
    __slots__ = ("max_items", "category", "decision", "audit", "lease_seconds", "peek", "reviewer")
    MAX_ITEMS_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    AUDIT_FIELD_NUMBER: _ClassVar[int]
    LEASE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    PEEK_FIELD_NUMBER: _ClassVar[int]
    REVIEWER_FIELD_NUMBER: _ClassVar[int]
    max_items: int
    category: str
    decision: Decision
    audit: bool
    lease_seconds: int
    peek: bool
    reviewer: str
    def __init__(self, max_items: _Optional[int] = ..., category: _Optional[str] = ..., decision: _Optional[_Union[Decision, str]] = ..., audit: _Optional[bool] = ..., lease_seconds: _Optional[int] = ..., peek: _Optional[bool] = ..., reviewer: _Optional[str] = ...) -> None: ...

class ClaimReviewsResponse(_message.Message):
    __slots__ = ("items", "pending")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[ReviewItem]
    pending: int
    def __init__(self, items: _Optional[_Iterable[_Union[ReviewItem, _Mapping]]] = ..., pending: _Optional[int] = ...) -> None: ...

class NoneOfThese(_message.Message):
    __slots__ = ("new_category", "parent")
    NEW_CATEGORY_FIELD_NUMBER: _ClassVar[int]
    PARENT_FIELD_NUMBER: _ClassVar[int]
    new_category: str
    parent: str
    def __init__(self, new_category: _Optional[str] = ..., parent: _Optional[str] = ...) -> None: ...

class SubmitVerdictRequest(_message.Message):
    __slots__ = ("review_id", "category", "none_of_these", "skip", "reviewer")
    REVIEW_ID_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    NONE_OF_THESE_FIELD_NUMBER: _ClassVar[int]
    SKIP_FIELD_NUMBER: _ClassVar[int]
    REVIEWER_FIELD_NUMBER: _ClassVar[int]
    review_id: str
    category: str
    none_of_these: NoneOfThese
    skip: bool
    reviewer: str
    def __init__(self, review_id: _Optional[str] = ..., category: _Optional[str] = ..., none_of_these: _Optional[_Union[NoneOfThese, _Mapping]] = ..., skip: _Optional[bool] = ..., reviewer: _Optional[str] = ...) -> None: ...

class SubmitVerdictResponse(_message.Message):
    __slots__ = ("review_id", "category", "model_was_right", "labelled", "reference_id", "category_created", "message")
    REVIEW_ID_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    MODEL_WAS_RIGHT_FIELD_NUMBER: _ClassVar[int]
    LABELLED_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_ID_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_CREATED_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    review_id: str
    category: str
    model_was_right: bool
    labelled: bool
    reference_id: str
    category_created: bool
    message: str
    def __init__(self, review_id: _Optional[str] = ..., category: _Optional[str] = ..., model_was_right: _Optional[bool] = ..., labelled: _Optional[bool] = ..., reference_id: _Optional[str] = ..., category_created: _Optional[bool] = ..., message: _Optional[str] = ...) -> None: ...

class GetReviewStatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DayCount(_message.Message):
    __slots__ = ("day", "count")
    DAY_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    day: str
    count: int
    def __init__(self, day: _Optional[str] = ..., count: _Optional[int] = ...) -> None: ...

class AuditPrecision(_message.Message):
    __slots__ = ("reviewed", "right", "precision", "lower", "upper", "target", "needed", "below_target", "guard_active")
    REVIEWED_FIELD_NUMBER: _ClassVar[int]
    RIGHT_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    LOWER_FIELD_NUMBER: _ClassVar[int]
    UPPER_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    NEEDED_FIELD_NUMBER: _ClassVar[int]
    BELOW_TARGET_FIELD_NUMBER: _ClassVar[int]
    GUARD_ACTIVE_FIELD_NUMBER: _ClassVar[int]
    reviewed: int
    right: int
    precision: float
    lower: float
    upper: float
    target: float
    needed: int
    below_target: bool
    guard_active: bool
    def __init__(self, reviewed: _Optional[int] = ..., right: _Optional[int] = ..., precision: _Optional[float] = ..., lower: _Optional[float] = ..., upper: _Optional[float] = ..., target: _Optional[float] = ..., needed: _Optional[int] = ..., below_target: _Optional[bool] = ..., guard_active: _Optional[bool] = ...) -> None: ...

class ReviewStats(_message.Message):
    __slots__ = ("pending", "leased", "reviewed", "skipped", "dropped_full", "dropped_expired", "reviewed_per_day", "agreement", "audit", "max_items", "audit_share")
    PENDING_FIELD_NUMBER: _ClassVar[int]
    LEASED_FIELD_NUMBER: _ClassVar[int]
    REVIEWED_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FULL_FIELD_NUMBER: _ClassVar[int]
    DROPPED_EXPIRED_FIELD_NUMBER: _ClassVar[int]
    REVIEWED_PER_DAY_FIELD_NUMBER: _ClassVar[int]
    AGREEMENT_FIELD_NUMBER: _ClassVar[int]
    AUDIT_FIELD_NUMBER: _ClassVar[int]
    MAX_ITEMS_FIELD_NUMBER: _ClassVar[int]
    AUDIT_SHARE_FIELD_NUMBER: _ClassVar[int]
    pending: int
    leased: int
    reviewed: int
    skipped: int
    dropped_full: int
    dropped_expired: int
    reviewed_per_day: _containers.RepeatedCompositeFieldContainer[DayCount]
    agreement: float
    audit: AuditPrecision
    max_items: int
    audit_share: float
    def __init__(self, pending: _Optional[int] = ..., leased: _Optional[int] = ..., reviewed: _Optional[int] = ..., skipped: _Optional[int] = ..., dropped_full: _Optional[int] = ..., dropped_expired: _Optional[int] = ..., reviewed_per_day: _Optional[_Iterable[_Union[DayCount, _Mapping]]] = ..., agreement: _Optional[float] = ..., audit: _Optional[_Union[AuditPrecision, _Mapping]] = ..., max_items: _Optional[int] = ..., audit_share: _Optional[float] = ...) -> None: ...

class WhoAmIRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WhoAmIResponse(_message.Message):
    __slots__ = ("name", "role", "auth_enabled")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    AUTH_ENABLED_FIELD_NUMBER: _ClassVar[int]
    name: str
    role: str
    auth_enabled: bool
    def __init__(self, name: _Optional[str] = ..., role: _Optional[str] = ..., auth_enabled: _Optional[bool] = ...) -> None: ...

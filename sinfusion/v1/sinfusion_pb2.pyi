from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ResizePolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RESIZE_POLICY_UNSPECIFIED: _ClassVar[ResizePolicy]
    RESIZE_POLICY_RESIZE: _ClassVar[ResizePolicy]
    RESIZE_POLICY_REFUSE: _ClassVar[ResizePolicy]

class SamplingMethod(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SAMPLING_METHOD_UNSPECIFIED: _ClassVar[SamplingMethod]
    SAMPLING_METHOD_DDPM: _ClassVar[SamplingMethod]
    SAMPLING_METHOD_DDIM: _ClassVar[SamplingMethod]

class SummaryAxes(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SUMMARY_AXES_UNSPECIFIED: _ClassVar[SummaryAxes]
    SUMMARY_AXES_BOTH: _ClassVar[SummaryAxes]
    SUMMARY_AXES_WIDTH: _ClassVar[SummaryAxes]
    SUMMARY_AXES_HEIGHT: _ClassVar[SummaryAxes]
RESIZE_POLICY_UNSPECIFIED: ResizePolicy
RESIZE_POLICY_RESIZE: ResizePolicy
RESIZE_POLICY_REFUSE: ResizePolicy
SAMPLING_METHOD_UNSPECIFIED: SamplingMethod
SAMPLING_METHOD_DDPM: SamplingMethod
SAMPLING_METHOD_DDIM: SamplingMethod
SUMMARY_AXES_UNSPECIFIED: SummaryAxes
SUMMARY_AXES_BOTH: SummaryAxes
SUMMARY_AXES_WIDTH: SummaryAxes
SUMMARY_AXES_HEIGHT: SummaryAxes

class RawFrame(_message.Message):
    __slots__ = ("width", "height", "rgb")
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    RGB_FIELD_NUMBER: _ClassVar[int]
    width: int
    height: int
    rgb: bytes
    def __init__(self, width: _Optional[int] = ..., height: _Optional[int] = ..., rgb: _Optional[bytes] = ...) -> None: ...

class Frame(_message.Message):
    __slots__ = ("index", "width", "height", "rgb", "synthesized", "resized", "noise_level")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    RGB_FIELD_NUMBER: _ClassVar[int]
    SYNTHESIZED_FIELD_NUMBER: _ClassVar[int]
    RESIZED_FIELD_NUMBER: _ClassVar[int]
    NOISE_LEVEL_FIELD_NUMBER: _ClassVar[int]
    index: int
    width: int
    height: int
    rgb: bytes
    synthesized: bool
    resized: bool
    noise_level: int
    def __init__(self, index: _Optional[int] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., rgb: _Optional[bytes] = ..., synthesized: _Optional[bool] = ..., resized: _Optional[bool] = ..., noise_level: _Optional[int] = ...) -> None: ...

class SamplingParams(_message.Message):
    __slots__ = ("steps", "method", "correction_steps", "seed")
    STEPS_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    CORRECTION_STEPS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    steps: int
    method: SamplingMethod
    correction_steps: int
    seed: int
    def __init__(self, steps: _Optional[int] = ..., method: _Optional[_Union[SamplingMethod, str]] = ..., correction_steps: _Optional[int] = ..., seed: _Optional[int] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...

class DescribeModelRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "width", "height", "fps", "frame_count", "capabilities", "runtime", "roles", "schedule_steps", "default_correction_steps", "batch_sizes", "mode", "max_step", "quality", "correction_weight", "correction_passes", "predictor_margin", "coarse_correction_level", "coarse_correction_weight", "layout_pull", "layout_sigma", "layout_motion", "layout_window")
    NAME_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    FPS_FIELD_NUMBER: _ClassVar[int]
    FRAME_COUNT_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    ROLES_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_STEPS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_CORRECTION_STEPS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZES_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    MAX_STEP_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    CORRECTION_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    CORRECTION_PASSES_FIELD_NUMBER: _ClassVar[int]
    PREDICTOR_MARGIN_FIELD_NUMBER: _ClassVar[int]
    COARSE_CORRECTION_LEVEL_FIELD_NUMBER: _ClassVar[int]
    COARSE_CORRECTION_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_PULL_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_SIGMA_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_MOTION_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_WINDOW_FIELD_NUMBER: _ClassVar[int]
    name: str
    width: int
    height: int
    fps: float
    frame_count: int
    capabilities: _containers.RepeatedScalarFieldContainer[str]
    runtime: str
    roles: _containers.RepeatedScalarFieldContainer[str]
    schedule_steps: int
    default_correction_steps: int
    batch_sizes: _containers.RepeatedScalarFieldContainer[int]
    mode: str
    max_step: int
    quality: NextFrameQuality
    correction_weight: float
    correction_passes: int
    predictor_margin: int
    coarse_correction_level: int
    coarse_correction_weight: float
    layout_pull: float
    layout_sigma: float
    layout_motion: float
    layout_window: int
    def __init__(self, name: _Optional[str] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., fps: _Optional[float] = ..., frame_count: _Optional[int] = ..., capabilities: _Optional[_Iterable[str]] = ..., runtime: _Optional[str] = ..., roles: _Optional[_Iterable[str]] = ..., schedule_steps: _Optional[int] = ..., default_correction_steps: _Optional[int] = ..., batch_sizes: _Optional[_Iterable[int]] = ..., mode: _Optional[str] = ..., max_step: _Optional[int] = ..., quality: _Optional[_Union[NextFrameQuality, _Mapping]] = ..., correction_weight: _Optional[float] = ..., correction_passes: _Optional[int] = ..., predictor_margin: _Optional[int] = ..., coarse_correction_level: _Optional[int] = ..., coarse_correction_weight: _Optional[float] = ..., layout_pull: _Optional[float] = ..., layout_sigma: _Optional[float] = ..., layout_motion: _Optional[float] = ..., layout_window: _Optional[int] = ...) -> None: ...

class NextFrameQuality(_message.Message):
    __slots__ = ("model_psnr", "copy_psnr", "pairs", "pairs_won", "predictor_steps", "predictor_seconds", "verdict")
    MODEL_PSNR_FIELD_NUMBER: _ClassVar[int]
    COPY_PSNR_FIELD_NUMBER: _ClassVar[int]
    PAIRS_FIELD_NUMBER: _ClassVar[int]
    PAIRS_WON_FIELD_NUMBER: _ClassVar[int]
    PREDICTOR_STEPS_FIELD_NUMBER: _ClassVar[int]
    PREDICTOR_SECONDS_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    model_psnr: float
    copy_psnr: float
    pairs: int
    pairs_won: int
    predictor_steps: int
    predictor_seconds: float
    verdict: str
    def __init__(self, model_psnr: _Optional[float] = ..., copy_psnr: _Optional[float] = ..., pairs: _Optional[int] = ..., pairs_won: _Optional[int] = ..., predictor_steps: _Optional[int] = ..., predictor_seconds: _Optional[float] = ..., verdict: _Optional[str] = ...) -> None: ...

class ExtrapolateRequest(_message.Message):
    __slots__ = ("model", "frames", "step", "start_frame", "start_image", "resize", "sampling")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    START_FRAME_FIELD_NUMBER: _ClassVar[int]
    START_IMAGE_FIELD_NUMBER: _ClassVar[int]
    RESIZE_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    model: str
    frames: int
    step: int
    start_frame: int
    start_image: RawFrame
    resize: ResizePolicy
    sampling: SamplingParams
    def __init__(self, model: _Optional[str] = ..., frames: _Optional[int] = ..., step: _Optional[int] = ..., start_frame: _Optional[int] = ..., start_image: _Optional[_Union[RawFrame, _Mapping]] = ..., resize: _Optional[_Union[ResizePolicy, str]] = ..., sampling: _Optional[_Union[SamplingParams, _Mapping]] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("model", "frames", "sampling")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    model: str
    frames: int
    sampling: SamplingParams
    def __init__(self, model: _Optional[str] = ..., frames: _Optional[int] = ..., sampling: _Optional[_Union[SamplingParams, _Mapping]] = ...) -> None: ...

class UpsampleRequest(_message.Message):
    __slots__ = ("model", "factor", "resize", "sampling", "frame")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    FACTOR_FIELD_NUMBER: _ClassVar[int]
    RESIZE_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    FRAME_FIELD_NUMBER: _ClassVar[int]
    model: str
    factor: int
    resize: ResizePolicy
    sampling: SamplingParams
    frame: RawFrame
    def __init__(self, model: _Optional[str] = ..., factor: _Optional[int] = ..., resize: _Optional[_Union[ResizePolicy, str]] = ..., sampling: _Optional[_Union[SamplingParams, _Mapping]] = ..., frame: _Optional[_Union[RawFrame, _Mapping]] = ...) -> None: ...

class ProjectRequest(_message.Message):
    __slots__ = ("model", "image", "resize", "strength", "sampling", "intermediate_steps")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    RESIZE_FIELD_NUMBER: _ClassVar[int]
    STRENGTH_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    INTERMEDIATE_STEPS_FIELD_NUMBER: _ClassVar[int]
    model: str
    image: RawFrame
    resize: ResizePolicy
    strength: float
    sampling: SamplingParams
    intermediate_steps: bool
    def __init__(self, model: _Optional[str] = ..., image: _Optional[_Union[RawFrame, _Mapping]] = ..., resize: _Optional[_Union[ResizePolicy, str]] = ..., strength: _Optional[float] = ..., sampling: _Optional[_Union[SamplingParams, _Mapping]] = ..., intermediate_steps: _Optional[bool] = ...) -> None: ...

class SummarizeRequest(_message.Message):
    __slots__ = ("model", "image", "resize", "scales", "axes", "strength", "sampling")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    RESIZE_FIELD_NUMBER: _ClassVar[int]
    SCALES_FIELD_NUMBER: _ClassVar[int]
    AXES_FIELD_NUMBER: _ClassVar[int]
    STRENGTH_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    model: str
    image: RawFrame
    resize: ResizePolicy
    scales: _containers.RepeatedScalarFieldContainer[float]
    axes: SummaryAxes
    strength: float
    sampling: SamplingParams
    def __init__(self, model: _Optional[str] = ..., image: _Optional[_Union[RawFrame, _Mapping]] = ..., resize: _Optional[_Union[ResizePolicy, str]] = ..., scales: _Optional[_Iterable[float]] = ..., axes: _Optional[_Union[SummaryAxes, str]] = ..., strength: _Optional[float] = ..., sampling: _Optional[_Union[SamplingParams, _Mapping]] = ...) -> None: ...

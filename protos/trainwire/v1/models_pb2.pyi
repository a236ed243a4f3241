from trainwire.v1 import tensor_pb2 as _tensor_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ModelSpec(_message.Message):
    __slots__ = ("input_dim", "layers")
    INPUT_DIM_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    input_dim: int
    layers: _containers.RepeatedCompositeFieldContainer[LayerSpec]
    def __init__(self, input_dim: _Optional[int] = ..., layers: _Optional[_Iterable[_Union[LayerSpec, _Mapping]]] = ...) -> None: ...

class LayerSpec(_message.Message):
    __slots__ = ("dense", "dropout", "batch_norm", "activation")
    DENSE_FIELD_NUMBER: _ClassVar[int]
    DROPOUT_FIELD_NUMBER: _ClassVar[int]
    BATCH_NORM_FIELD_NUMBER: _ClassVar[int]
    ACTIVATION_FIELD_NUMBER: _ClassVar[int]
    dense: DenseLayer
    dropout: DropoutLayer
    batch_norm: BatchNormLayer
    activation: ActivationLayer
    def __init__(self, dense: _Optional[_Union[DenseLayer, _Mapping]] = ..., dropout: _Optional[_Union[DropoutLayer, _Mapping]] = ..., batch_norm: _Optional[_Union[BatchNormLayer, _Mapping]] = ..., activation: _Optional[_Union[ActivationLayer, _Mapping]] = ...) -> None: ...

class DenseLayer(_message.Message):
    __slots__ = ("units", "activation", "no_bias", "kernel_initializer", "bias_initializer")
    UNITS_FIELD_NUMBER: _ClassVar[int]
    ACTIVATION_FIELD_NUMBER: _ClassVar[int]
    NO_BIAS_FIELD_NUMBER: _ClassVar[int]
    KERNEL_INITIALIZER_FIELD_NUMBER: _ClassVar[int]
    BIAS_INITIALIZER_FIELD_NUMBER: _ClassVar[int]
    units: int
    activation: str
    no_bias: bool
    kernel_initializer: str
    bias_initializer: str
    def __init__(self, units: _Optional[int] = ..., activation: _Optional[str] = ..., no_bias: _Optional[bool] = ..., kernel_initializer: _Optional[str] = ..., bias_initializer: _Optional[str] = ...) -> None: ...

class DropoutLayer(_message.Message):
    __slots__ = ("rate",)
    RATE_FIELD_NUMBER: _ClassVar[int]
    rate: float
    def __init__(self, rate: _Optional[float] = ...) -> None: ...

class BatchNormLayer(_message.Message):
    __slots__ = ("momentum", "epsilon")
    MOMENTUM_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    momentum: float
    epsilon: float
    def __init__(self, momentum: _Optional[float] = ..., epsilon: _Optional[float] = ...) -> None: ...

class ActivationLayer(_message.Message):
    __slots__ = ("name", "params")
    class ParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    name: str
    params: _containers.ScalarMap[str, float]
    def __init__(self, name: _Optional[str] = ..., params: _Optional[_Mapping[str, float]] = ...) -> None: ...

class OptimizerSpec(_message.Message):
    __slots__ = ("name", "learning_rate", "params")
    class ParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    name: str
    learning_rate: float
    params: _containers.ScalarMap[str, float]
    def __init__(self, name: _Optional[str] = ..., learning_rate: _Optional[float] = ..., params: _Optional[_Mapping[str, float]] = ...) -> None: ...

class ScheduleSpec(_message.Message):
    __slots__ = ("name", "params", "options")
    class ParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class OptionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    name: str
    params: _containers.ScalarMap[str, float]
    options: _containers.ScalarMap[str, str]
    def __init__(self, name: _Optional[str] = ..., params: _Optional[_Mapping[str, float]] = ..., options: _Optional[_Mapping[str, str]] = ...) -> None: ...

class EarlyStopping(_message.Message):
    __slots__ = ("monitor", "patience", "min_delta", "restore_best_weights")
    MONITOR_FIELD_NUMBER: _ClassVar[int]
    PATIENCE_FIELD_NUMBER: _ClassVar[int]
    MIN_DELTA_FIELD_NUMBER: _ClassVar[int]
    RESTORE_BEST_WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    monitor: str
    patience: int
    min_delta: float
    restore_best_weights: bool
    def __init__(self, monitor: _Optional[str] = ..., patience: _Optional[int] = ..., min_delta: _Optional[float] = ..., restore_best_weights: _Optional[bool] = ...) -> None: ...

class TrainingConfig(_message.Message):
    __slots__ = ("epochs", "batch_size", "loss", "optimizer", "schedule", "validation_fraction", "seed", "metrics", "early_stopping", "checkpoint_every_epochs", "dtype", "log_every_steps", "keep_checkpoints")
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_FRACTION_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    EARLY_STOPPING_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_EVERY_EPOCHS_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    LOG_EVERY_STEPS_FIELD_NUMBER: _ClassVar[int]
    KEEP_CHECKPOINTS_FIELD_NUMBER: _ClassVar[int]
    epochs: int
    batch_size: int
    loss: str
    optimizer: OptimizerSpec
    schedule: ScheduleSpec
    validation_fraction: float
    seed: int
    metrics: _containers.RepeatedScalarFieldContainer[str]
    early_stopping: EarlyStopping
    checkpoint_every_epochs: int
    dtype: _tensor_pb2.DataType
    log_every_steps: int
    keep_checkpoints: int
    def __init__(self, epochs: _Optional[int] = ..., batch_size: _Optional[int] = ..., loss: _Optional[str] = ..., optimizer: _Optional[_Union[OptimizerSpec, _Mapping]] = ..., schedule: _Optional[_Union[ScheduleSpec, _Mapping]] = ..., validation_fraction: _Optional[float] = ..., seed: _Optional[int] = ..., metrics: _Optional[_Iterable[str]] = ..., early_stopping: _Optional[_Union[EarlyStopping, _Mapping]] = ..., checkpoint_every_epochs: _Optional[int] = ..., dtype: _Optional[_Union[_tensor_pb2.DataType, str]] = ..., log_every_steps: _Optional[int] = ..., keep_checkpoints: _Optional[int] = ...) -> None: ...

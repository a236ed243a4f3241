from trainwire.v1 import models_pb2 as _models_pb2
from trainwire.v1 import tensor_pb2 as _tensor_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PredictRequest(_message.Message):
    __slots__ = ("job", "checkpoint", "inputs", "outputs_only")
    JOB_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_ONLY_FIELD_NUMBER: _ClassVar[int]
    job: str
    checkpoint: str
    inputs: _tensor_pb2.Tensor
    outputs_only: bool
    def __init__(self, job: _Optional[str] = ..., checkpoint: _Optional[str] = ..., inputs: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., outputs_only: _Optional[bool] = ...) -> None: ...

class PredictResponse(_message.Message):
    __slots__ = ("checkpoint", "outputs", "probabilities", "labels")
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    checkpoint: str
    outputs: _tensor_pb2.Tensor
    probabilities: _tensor_pb2.Tensor
    labels: _tensor_pb2.Tensor
    def __init__(self, checkpoint: _Optional[str] = ..., outputs: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., probabilities: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., labels: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ...) -> None: ...

class GetModelMetadataRequest(_message.Message):
    __slots__ = ("job", "checkpoint")
    JOB_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    job: str
    checkpoint: str
    def __init__(self, job: _Optional[str] = ..., checkpoint: _Optional[str] = ...) -> None: ...

class ModelMetadata(_message.Message):
    __slots__ = ("job", "checkpoint", "inputs", "outputs", "num_classes", "model", "num_parameters", "class_names", "feature_names", "max_message_bytes")
    JOB_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    NUM_CLASSES_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    NUM_PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    FEATURE_NAMES_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    job: str
    checkpoint: str
    inputs: _tensor_pb2.TensorInfo
    outputs: _tensor_pb2.TensorInfo
    num_classes: int
    model: _models_pb2.ModelSpec
    num_parameters: int
    class_names: _containers.RepeatedScalarFieldContainer[str]
    feature_names: _containers.RepeatedScalarFieldContainer[str]
    max_message_bytes: int
    def __init__(self, job: _Optional[str] = ..., checkpoint: _Optional[str] = ..., inputs: _Optional[_Union[_tensor_pb2.TensorInfo, _Mapping]] = ..., outputs: _Optional[_Union[_tensor_pb2.TensorInfo, _Mapping]] = ..., num_classes: _Optional[int] = ..., model: _Optional[_Union[_models_pb2.ModelSpec, _Mapping]] = ..., num_parameters: _Optional[int] = ..., class_names: _Optional[_Iterable[str]] = ..., feature_names: _Optional[_Iterable[str]] = ..., max_message_bytes: _Optional[int] = ...) -> None: ...

import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from gpufleet.v1 import agent_pb2 as _agent_pb2
from gpufleet.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ModelStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODEL_STATUS_UNSPECIFIED: _ClassVar[ModelStatus]
    MODEL_STATUS_READY: _ClassVar[ModelStatus]
    MODEL_STATUS_IN_PROGRESS: _ClassVar[ModelStatus]
    MODEL_STATUS_COMPLETED: _ClassVar[ModelStatus]
    MODEL_STATUS_STOPPED: _ClassVar[ModelStatus]
    MODEL_STATUS_ERROR: _ClassVar[ModelStatus]

class JobStatusCode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATUS_CODE_UNSPECIFIED: _ClassVar[JobStatusCode]
    JOB_STATUS_CODE_QUEUED: _ClassVar[JobStatusCode]
    JOB_STATUS_CODE_RUNNING: _ClassVar[JobStatusCode]
    JOB_STATUS_CODE_SUCCESS: _ClassVar[JobStatusCode]
    JOB_STATUS_CODE_FAILED: _ClassVar[JobStatusCode]
    JOB_STATUS_CODE_STOPPED: _ClassVar[JobStatusCode]
    JOB_STATUS_CODE_CANCELED: _ClassVar[JobStatusCode]

class NodeState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    NODE_STATE_UNSPECIFIED: _ClassVar[NodeState]
    NODE_STATE_READY: _ClassVar[NodeState]
    NODE_STATE_DRAINING: _ClassVar[NodeState]
    NODE_STATE_DRAINED: _ClassVar[NodeState]
    NODE_STATE_LOST: _ClassVar[NodeState]
    NODE_STATE_UNREACHABLE: _ClassVar[NodeState]
MODEL_STATUS_UNSPECIFIED: ModelStatus
MODEL_STATUS_READY: ModelStatus
MODEL_STATUS_IN_PROGRESS: ModelStatus
MODEL_STATUS_COMPLETED: ModelStatus
MODEL_STATUS_STOPPED: ModelStatus
MODEL_STATUS_ERROR: ModelStatus
JOB_STATUS_CODE_UNSPECIFIED: JobStatusCode
JOB_STATUS_CODE_QUEUED: JobStatusCode
JOB_STATUS_CODE_RUNNING: JobStatusCode
JOB_STATUS_CODE_SUCCESS: JobStatusCode
JOB_STATUS_CODE_FAILED: JobStatusCode
JOB_STATUS_CODE_STOPPED: JobStatusCode
JOB_STATUS_CODE_CANCELED: JobStatusCode
NODE_STATE_UNSPECIFIED: NodeState
NODE_STATE_READY: NodeState
NODE_STATE_DRAINING: NodeState
NODE_STATE_DRAINED: NodeState
NODE_STATE_LOST: NodeState
NODE_STATE_UNREACHABLE: NodeState

class ModelRef(_message.Message):
    __slots__ = ("uuid",)
    UUID_FIELD_NUMBER: _ClassVar[int]
    uuid: str
    def __init__(self, uuid: _Optional[str] = ...) -> None: ...

class JobRef(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class NodeRef(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class CreateModelRequest(_message.Message):
    __slots__ = ("model_no", "version", "train_type", "memo", "params_json", "spec", "gpus", "priority", "constraints", "max_retries", "auto_test", "lost_after_seconds")
    class ConstraintsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MODEL_NO_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TRAIN_TYPE_FIELD_NUMBER: _ClassVar[int]
    MEMO_FIELD_NUMBER: _ClassVar[int]
    PARAMS_JSON_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    CONSTRAINTS_FIELD_NUMBER: _ClassVar[int]
    MAX_RETRIES_FIELD_NUMBER: _ClassVar[int]
    AUTO_TEST_FIELD_NUMBER: _ClassVar[int]
    LOST_AFTER_SECONDS_FIELD_NUMBER: _ClassVar[int]
    model_no: str
    version: str
    train_type: str
    memo: str
    params_json: str
    spec: _common_pb2.JobSpec
    gpus: int
    priority: int
    constraints: _containers.ScalarMap[str, str]
    max_retries: int
    auto_test: str
    lost_after_seconds: int
    def __init__(self, model_no: _Optional[str] = ..., version: _Optional[str] = ..., train_type: _Optional[str] = ..., memo: _Optional[str] = ..., params_json: _Optional[str] = ..., spec: _Optional[_Union[_common_pb2.JobSpec, _Mapping]] = ..., gpus: _Optional[int] = ..., priority: _Optional[int] = ..., constraints: _Optional[_Mapping[str, str]] = ..., max_retries: _Optional[int] = ..., auto_test: _Optional[str] = ..., lost_after_seconds: _Optional[int] = ...) -> None: ...

class Model(_message.Message):
    __slots__ = ("uuid", "model_no", "version", "train_type", "memo", "params_json", "status", "step1_state", "step2_state", "step1_started_at", "step1_finished_at", "step2_started_at", "step2_finished_at", "step1_duration", "step1_seconds", "step2_duration", "step2_seconds", "step1_metric_saved", "step2_metric_saved", "current_attempt_id", "best_epoch", "last_error", "created_at", "test_epoch", "spec", "gpus", "status_name", "step1_state_name", "step2_state_name", "progress", "trimmed", "auto_test")
    UUID_FIELD_NUMBER: _ClassVar[int]
    MODEL_NO_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TRAIN_TYPE_FIELD_NUMBER: _ClassVar[int]
    MEMO_FIELD_NUMBER: _ClassVar[int]
    PARAMS_JSON_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    STEP1_STATE_FIELD_NUMBER: _ClassVar[int]
    STEP2_STATE_FIELD_NUMBER: _ClassVar[int]
    STEP1_STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    STEP1_FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    STEP2_STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    STEP2_FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    STEP1_DURATION_FIELD_NUMBER: _ClassVar[int]
    STEP1_SECONDS_FIELD_NUMBER: _ClassVar[int]
    STEP2_DURATION_FIELD_NUMBER: _ClassVar[int]
    STEP2_SECONDS_FIELD_NUMBER: _ClassVar[int]
    STEP1_METRIC_SAVED_FIELD_NUMBER: _ClassVar[int]
    STEP2_METRIC_SAVED_FIELD_NUMBER: _ClassVar[int]
    CURRENT_ATTEMPT_ID_FIELD_NUMBER: _ClassVar[int]
    BEST_EPOCH_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    TEST_EPOCH_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    STATUS_NAME_FIELD_NUMBER: _ClassVar[int]
    STEP1_STATE_NAME_FIELD_NUMBER: _ClassVar[int]
    STEP2_STATE_NAME_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    TRIMMED_FIELD_NUMBER: _ClassVar[int]
    AUTO_TEST_FIELD_NUMBER: _ClassVar[int]
    uuid: str
    model_no: str
    version: str
    train_type: str
    memo: str
    params_json: str
    status: ModelStatus
    step1_state: ModelStatus
    step2_state: ModelStatus
    step1_started_at: _timestamp_pb2.Timestamp
    step1_finished_at: _timestamp_pb2.Timestamp
    step2_started_at: _timestamp_pb2.Timestamp
    step2_finished_at: _timestamp_pb2.Timestamp
    step1_duration: str
    step1_seconds: float
    step2_duration: str
    step2_seconds: float
    step1_metric_saved: bool
    step2_metric_saved: bool
    current_attempt_id: str
    best_epoch: int
    last_error: str
    created_at: _timestamp_pb2.Timestamp
    test_epoch: int
    spec: _common_pb2.JobSpec
    gpus: int
    status_name: str
    step1_state_name: str
    step2_state_name: str
    progress: _common_pb2.Progress
    trimmed: bool
    auto_test: str
    def __init__(self, uuid: _Optional[str] = ..., model_no: _Optional[str] = ..., version: _Optional[str] = ..., train_type: _Optional[str] = ..., memo: _Optional[str] = ..., params_json: _Optional[str] = ..., status: _Optional[_Union[ModelStatus, str]] = ..., step1_state: _Optional[_Union[ModelStatus, str]] = ..., step2_state: _Optional[_Union[ModelStatus, str]] = ..., step1_started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., step1_finished_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., step2_started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., step2_finished_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., step1_duration: _Optional[str] = ..., step1_seconds: _Optional[float] = ..., step2_duration: _Optional[str] = ..., step2_seconds: _Optional[float] = ..., step1_metric_saved: _Optional[bool] = ..., step2_metric_saved: _Optional[bool] = ..., current_attempt_id: _Optional[str] = ..., best_epoch: _Optional[int] = ..., last_error: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., test_epoch: _Optional[int] = ..., spec: _Optional[_Union[_common_pb2.JobSpec, _Mapping]] = ..., gpus: _Optional[int] = ..., status_name: _Optional[str] = ..., step1_state_name: _Optional[str] = ..., step2_state_name: _Optional[str] = ..., progress: _Optional[_Union[_common_pb2.Progress, _Mapping]] = ..., trimmed: _Optional[bool] = ..., auto_test: _Optional[str] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ("status", "model_no", "page", "size")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    MODEL_NO_FIELD_NUMBER: _ClassVar[int]
    PAGE_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    status: ModelStatus
    model_no: str
    page: int
    size: int
    def __init__(self, status: _Optional[_Union[ModelStatus, str]] = ..., model_no: _Optional[str] = ..., page: _Optional[int] = ..., size: _Optional[int] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("items", "total_elements", "total_pages", "page", "size")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_ELEMENTS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_PAGES_FIELD_NUMBER: _ClassVar[int]
    PAGE_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[Model]
    total_elements: int
    total_pages: int
    page: int
    size: int
    def __init__(self, items: _Optional[_Iterable[_Union[Model, _Mapping]]] = ..., total_elements: _Optional[int] = ..., total_pages: _Optional[int] = ..., page: _Optional[int] = ..., size: _Optional[int] = ...) -> None: ...

class RunTestRequest(_message.Message):
    __slots__ = ("uuid", "epoch")
    UUID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    uuid: str
    epoch: int
    def __init__(self, uuid: _Optional[str] = ..., epoch: _Optional[int] = ...) -> None: ...

class SubmitJobRequest(_message.Message):
    __slots__ = ("spec", "gpus", "priority", "constraints", "max_retries", "resume_on_retry", "name", "request_id", "wait_for_capacity", "depends_on", "dependency_mode", "time_limit_seconds", "lost_after_seconds")
    class ConstraintsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SPEC_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    CONSTRAINTS_FIELD_NUMBER: _ClassVar[int]
    MAX_RETRIES_FIELD_NUMBER: _ClassVar[int]
    RESUME_ON_RETRY_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    WAIT_FOR_CAPACITY_FIELD_NUMBER: _ClassVar[int]
    DEPENDS_ON_FIELD_NUMBER: _ClassVar[int]
    DEPENDENCY_MODE_FIELD_NUMBER: _ClassVar[int]
    TIME_LIMIT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    LOST_AFTER_SECONDS_FIELD_NUMBER: _ClassVar[int]
    spec: _common_pb2.JobSpec
    gpus: int
    priority: int
    constraints: _containers.ScalarMap[str, str]
    max_retries: int
    resume_on_retry: bool
    name: str
    request_id: str
    wait_for_capacity: bool
    depends_on: _containers.RepeatedScalarFieldContainer[str]
    dependency_mode: str
    time_limit_seconds: int
    lost_after_seconds: int
    def __init__(self, spec: _Optional[_Union[_common_pb2.JobSpec, _Mapping]] = ..., gpus: _Optional[int] = ..., priority: _Optional[int] = ..., constraints: _Optional[_Mapping[str, str]] = ..., max_retries: _Optional[int] = ..., resume_on_retry: _Optional[bool] = ..., name: _Optional[str] = ..., request_id: _Optional[str] = ..., wait_for_capacity: _Optional[bool] = ..., depends_on: _Optional[_Iterable[str]] = ..., dependency_mode: _Optional[str] = ..., time_limit_seconds: _Optional[int] = ..., lost_after_seconds: _Optional[int] = ...) -> None: ...

class SubmitArrayRequest(_message.Message):
    __slots__ = ("job", "count", "max_running", "params")
    JOB_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    MAX_RUNNING_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    job: SubmitJobRequest
    count: int
    max_running: int
    params: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, job: _Optional[_Union[SubmitJobRequest, _Mapping]] = ..., count: _Optional[int] = ..., max_running: _Optional[int] = ..., params: _Optional[_Iterable[str]] = ...) -> None: ...

class ArrayRef(_message.Message):
    __slots__ = ("array_id",)
    ARRAY_ID_FIELD_NUMBER: _ClassVar[int]
    array_id: str
    def __init__(self, array_id: _Optional[str] = ...) -> None: ...

class JobArray(_message.Message):
    __slots__ = ("array_id", "jobs")
    ARRAY_ID_FIELD_NUMBER: _ClassVar[int]
    JOBS_FIELD_NUMBER: _ClassVar[int]
    array_id: str
    jobs: _containers.RepeatedCompositeFieldContainer[Job]
    def __init__(self, array_id: _Optional[str] = ..., jobs: _Optional[_Iterable[_Union[Job, _Mapping]]] = ...) -> None: ...

class PipelineStep(_message.Message):
    __slots__ = ("name", "job", "after", "shadow")
    NAME_FIELD_NUMBER: _ClassVar[int]
    JOB_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    SHADOW_FIELD_NUMBER: _ClassVar[int]
    name: str
    job: SubmitJobRequest
    after: _containers.RepeatedScalarFieldContainer[str]
    shadow: bool
    def __init__(self, name: _Optional[str] = ..., job: _Optional[_Union[SubmitJobRequest, _Mapping]] = ..., after: _Optional[_Iterable[str]] = ..., shadow: _Optional[bool] = ...) -> None: ...

class SubmitPipelineRequest(_message.Message):
    __slots__ = ("name", "steps")
    NAME_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    name: str
    steps: _containers.RepeatedCompositeFieldContainer[PipelineStep]
    def __init__(self, name: _Optional[str] = ..., steps: _Optional[_Iterable[_Union[PipelineStep, _Mapping]]] = ...) -> None: ...

class PipelineRef(_message.Message):
    __slots__ = ("pipeline_id",)
    PIPELINE_ID_FIELD_NUMBER: _ClassVar[int]
    pipeline_id: str
    def __init__(self, pipeline_id: _Optional[str] = ...) -> None: ...

class PipelineStepStatus(_message.Message):
    __slots__ = ("name", "job_id", "status_name", "after", "shadow", "reason")
    NAME_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_NAME_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    SHADOW_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    name: str
    job_id: str
    status_name: str
    after: _containers.RepeatedScalarFieldContainer[str]
    shadow: bool
    reason: str
    def __init__(self, name: _Optional[str] = ..., job_id: _Optional[str] = ..., status_name: _Optional[str] = ..., after: _Optional[_Iterable[str]] = ..., shadow: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...

class Pipeline(_message.Message):
    __slots__ = ("pipeline_id", "name", "state", "steps")
    PIPELINE_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    pipeline_id: str
    name: str
    state: str
    steps: _containers.RepeatedCompositeFieldContainer[PipelineStepStatus]
    def __init__(self, pipeline_id: _Optional[str] = ..., name: _Optional[str] = ..., state: _Optional[str] = ..., steps: _Optional[_Iterable[_Union[PipelineStepStatus, _Mapping]]] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("job_id", "model_uuid", "job_type", "attempt", "status", "exit_code", "error_message", "node", "gpu_indices", "gpus", "priority", "spec", "max_retries", "retries_used", "created_at", "started_at", "finished_at", "progress", "name", "status_name", "constraints", "resume_on_retry", "superseded_by", "trimmed", "pending_code", "pending_reason", "depends_on", "dependency_mode", "time_limit_seconds", "array_id", "array_index", "pipeline_id", "step", "shadow", "node_unreachable_since", "lost_after_seconds", "warnings", "gpu_usage")
    class ConstraintsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_UUID_FIELD_NUMBER: _ClassVar[int]
    JOB_TYPE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    GPU_INDICES_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    MAX_RETRIES_FIELD_NUMBER: _ClassVar[int]
    RETRIES_USED_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATUS_NAME_FIELD_NUMBER: _ClassVar[int]
    CONSTRAINTS_FIELD_NUMBER: _ClassVar[int]
    RESUME_ON_RETRY_FIELD_NUMBER: _ClassVar[int]
    SUPERSEDED_BY_FIELD_NUMBER: _ClassVar[int]
    TRIMMED_FIELD_NUMBER: _ClassVar[int]
    PENDING_CODE_FIELD_NUMBER: _ClassVar[int]
    PENDING_REASON_FIELD_NUMBER: _ClassVar[int]
    DEPENDS_ON_FIELD_NUMBER: _ClassVar[int]
    DEPENDENCY_MODE_FIELD_NUMBER: _ClassVar[int]
    TIME_LIMIT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ARRAY_ID_FIELD_NUMBER: _ClassVar[int]
    ARRAY_INDEX_FIELD_NUMBER: _ClassVar[int]
    PIPELINE_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    SHADOW_FIELD_NUMBER: _ClassVar[int]
    NODE_UNREACHABLE_SINCE_FIELD_NUMBER: _ClassVar[int]
    LOST_AFTER_SECONDS_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    GPU_USAGE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    model_uuid: str
    job_type: _common_pb2.JobType
    attempt: int
    status: JobStatusCode
    exit_code: int
    error_message: str
    node: str
    gpu_indices: _containers.RepeatedScalarFieldContainer[int]
    gpus: int
    priority: int
    spec: _common_pb2.JobSpec
    max_retries: int
    retries_used: int
    created_at: _timestamp_pb2.Timestamp
    started_at: _timestamp_pb2.Timestamp
    finished_at: _timestamp_pb2.Timestamp
    progress: _common_pb2.Progress
    name: str
    status_name: str
    constraints: _containers.ScalarMap[str, str]
    resume_on_retry: bool
    superseded_by: str
    trimmed: bool
    pending_code: str
    pending_reason: str
    depends_on: _containers.RepeatedScalarFieldContainer[str]
    dependency_mode: str
    time_limit_seconds: int
    array_id: str
    array_index: int
    pipeline_id: str
    step: str
    shadow: bool
    node_unreachable_since: _timestamp_pb2.Timestamp
    lost_after_seconds: int
    warnings: str
    gpu_usage: _common_pb2.GpuUsage
    def __init__(self, job_id: _Optional[str] = ..., model_uuid: _Optional[str] = ..., job_type: _Optional[_Union[_common_pb2.JobType, str]] = ..., attempt: _Optional[int] = ..., status: _Optional[_Union[JobStatusCode, str]] = ..., exit_code: _Optional[int] = ..., error_message: _Optional[str] = ..., node: _Optional[str] = ..., gpu_indices: _Optional[_Iterable[int]] = ..., gpus: _Optional[int] = ..., priority: _Optional[int] = ..., spec: _Optional[_Union[_common_pb2.JobSpec, _Mapping]] = ..., max_retries: _Optional[int] = ..., retries_used: _Optional[int] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., progress: _Optional[_Union[_common_pb2.Progress, _Mapping]] = ..., name: _Optional[str] = ..., status_name: _Optional[str] = ..., constraints: _Optional[_Mapping[str, str]] = ..., resume_on_retry: _Optional[bool] = ..., superseded_by: _Optional[str] = ..., trimmed: _Optional[bool] = ..., pending_code: _Optional[str] = ..., pending_reason: _Optional[str] = ..., depends_on: _Optional[_Iterable[str]] = ..., dependency_mode: _Optional[str] = ..., time_limit_seconds: _Optional[int] = ..., array_id: _Optional[str] = ..., array_index: _Optional[int] = ..., pipeline_id: _Optional[str] = ..., step: _Optional[str] = ..., shadow: _Optional[bool] = ..., node_unreachable_since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., lost_after_seconds: _Optional[int] = ..., warnings: _Optional[str] = ..., gpu_usage: _Optional[_Union[_common_pb2.GpuUsage, _Mapping]] = ...) -> None: ...

class ListJobsQuery(_message.Message):
    __slots__ = ("status", "model_uuid", "node", "page", "size")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    MODEL_UUID_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    PAGE_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    status: JobStatusCode
    model_uuid: str
    node: str
    page: int
    size: int
    def __init__(self, status: _Optional[_Union[JobStatusCode, str]] = ..., model_uuid: _Optional[str] = ..., node: _Optional[str] = ..., page: _Optional[int] = ..., size: _Optional[int] = ...) -> None: ...

class ListJobsPage(_message.Message):
    __slots__ = ("jobs", "total_elements", "total_pages")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_ELEMENTS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_PAGES_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[Job]
    total_elements: int
    total_pages: int
    def __init__(self, jobs: _Optional[_Iterable[_Union[Job, _Mapping]]] = ..., total_elements: _Optional[int] = ..., total_pages: _Optional[int] = ...) -> None: ...

class JobMetrics(_message.Message):
    __slots__ = ("job_id", "rows", "best_epoch")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    BEST_EPOCH_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    rows: _containers.RepeatedCompositeFieldContainer[_common_pb2.MetricRow]
    best_epoch: int
    def __init__(self, job_id: _Optional[str] = ..., rows: _Optional[_Iterable[_Union[_common_pb2.MetricRow, _Mapping]]] = ..., best_epoch: _Optional[int] = ...) -> None: ...

class UsageQuery(_message.Message):
    __slots__ = ("since_seconds", "by")
    SINCE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    BY_FIELD_NUMBER: _ClassVar[int]
    since_seconds: int
    by: str
    def __init__(self, since_seconds: _Optional[int] = ..., by: _Optional[str] = ...) -> None: ...

class UsageRow(_message.Message):
    __slots__ = ("key", "jobs", "gpu_seconds", "energy_joules", "peak_memory_bytes", "mean_utilization")
    KEY_FIELD_NUMBER: _ClassVar[int]
    JOBS_FIELD_NUMBER: _ClassVar[int]
    GPU_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ENERGY_JOULES_FIELD_NUMBER: _ClassVar[int]
    PEAK_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEAN_UTILIZATION_FIELD_NUMBER: _ClassVar[int]
    key: str
    jobs: int
    gpu_seconds: float
    energy_joules: float
    peak_memory_bytes: int
    mean_utilization: float
    def __init__(self, key: _Optional[str] = ..., jobs: _Optional[int] = ..., gpu_seconds: _Optional[float] = ..., energy_joules: _Optional[float] = ..., peak_memory_bytes: _Optional[int] = ..., mean_utilization: _Optional[float] = ...) -> None: ...

class UsageReport(_message.Message):
    __slots__ = ("since", "by", "rows", "total")
    SINCE_FIELD_NUMBER: _ClassVar[int]
    BY_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    since: _timestamp_pb2.Timestamp
    by: str
    rows: _containers.RepeatedCompositeFieldContainer[UsageRow]
    total: UsageRow
    def __init__(self, since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., by: _Optional[str] = ..., rows: _Optional[_Iterable[_Union[UsageRow, _Mapping]]] = ..., total: _Optional[_Union[UsageRow, _Mapping]] = ...) -> None: ...

class ListNodesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DownloadOutputRequest(_message.Message):
    __slots__ = ("job_id", "path")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    path: str
    def __init__(self, job_id: _Optional[str] = ..., path: _Optional[str] = ...) -> None: ...

class Node(_message.Message):
    __slots__ = ("name", "address", "labels", "state", "last_heartbeat", "agent_version", "gpus", "state_name", "runtime", "running_jobs", "dial_error")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    LAST_HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    STATE_NAME_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    RUNNING_JOBS_FIELD_NUMBER: _ClassVar[int]
    DIAL_ERROR_FIELD_NUMBER: _ClassVar[int]
    name: str
    address: str
    labels: _containers.ScalarMap[str, str]
    state: NodeState
    last_heartbeat: _timestamp_pb2.Timestamp
    agent_version: str
    gpus: _containers.RepeatedCompositeFieldContainer[_common_pb2.GpuInfo]
    state_name: str
    runtime: str
    running_jobs: int
    dial_error: str
    def __init__(self, name: _Optional[str] = ..., address: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., state: _Optional[_Union[NodeState, str]] = ..., last_heartbeat: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., agent_version: _Optional[str] = ..., gpus: _Optional[_Iterable[_Union[_common_pb2.GpuInfo, _Mapping]]] = ..., state_name: _Optional[str] = ..., runtime: _Optional[str] = ..., running_jobs: _Optional[int] = ..., dial_error: _Optional[str] = ...) -> None: ...

class ListNodesResponse(_message.Message):
    __slots__ = ("nodes",)
    NODES_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[Node]
    def __init__(self, nodes: _Optional[_Iterable[_Union[Node, _Mapping]]] = ...) -> None: ...

class CoordinatorStageRequest(_message.Message):
    __slots__ = ("uuid", "links", "node")
    UUID_FIELD_NUMBER: _ClassVar[int]
    LINKS_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    uuid: str
    links: _containers.RepeatedCompositeFieldContainer[_agent_pb2.StageLink]
    node: str
    def __init__(self, uuid: _Optional[str] = ..., links: _Optional[_Iterable[_Union[_agent_pb2.StageLink, _Mapping]]] = ..., node: _Optional[str] = ...) -> None: ...

class DatasetCountsResponse(_message.Message):
    __slots__ = ("uuid", "counts", "total")
    class CountsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    UUID_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    uuid: str
    counts: _containers.ScalarMap[str, int]
    total: int
    def __init__(self, uuid: _Optional[str] = ..., counts: _Optional[_Mapping[str, int]] = ..., total: _Optional[int] = ...) -> None: ...

class RegisterRequest(_message.Message):
    __slots__ = ("node_name", "address", "labels", "agent_version", "runtime", "gpus")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    node_name: str
    address: str
    labels: _containers.ScalarMap[str, str]
    agent_version: str
    runtime: str
    gpus: _containers.RepeatedCompositeFieldContainer[_common_pb2.GpuInfo]
    def __init__(self, node_name: _Optional[str] = ..., address: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., agent_version: _Optional[str] = ..., runtime: _Optional[str] = ..., gpus: _Optional[_Iterable[_Union[_common_pb2.GpuInfo, _Mapping]]] = ...) -> None: ...

class RegisterResponse(_message.Message):
    __slots__ = ("node_name", "heartbeat_interval_seconds")
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    node_name: str
    heartbeat_interval_seconds: float
    def __init__(self, node_name: _Optional[str] = ..., heartbeat_interval_seconds: _Optional[float] = ...) -> None: ...

class JobDigest(_message.Message):
    __slots__ = ("job_id", "attempt", "state")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    attempt: int
    state: _common_pb2.AgentJobState
    def __init__(self, job_id: _Optional[str] = ..., attempt: _Optional[int] = ..., state: _Optional[_Union[_common_pb2.AgentJobState, str]] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("node_name", "gpus", "jobs", "last_event_seq")
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    JOBS_FIELD_NUMBER: _ClassVar[int]
    LAST_EVENT_SEQ_FIELD_NUMBER: _ClassVar[int]
    node_name: str
    gpus: _containers.RepeatedCompositeFieldContainer[_common_pb2.GpuInfo]
    jobs: _containers.RepeatedCompositeFieldContainer[JobDigest]
    last_event_seq: int
    def __init__(self, node_name: _Optional[str] = ..., gpus: _Optional[_Iterable[_Union[_common_pb2.GpuInfo, _Mapping]]] = ..., jobs: _Optional[_Iterable[_Union[JobDigest, _Mapping]]] = ..., last_event_seq: _Optional[int] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("stop", "acknowledged", "reregister")
    STOP_FIELD_NUMBER: _ClassVar[int]
    ACKNOWLEDGED_FIELD_NUMBER: _ClassVar[int]
    REREGISTER_FIELD_NUMBER: _ClassVar[int]
    stop: _containers.RepeatedCompositeFieldContainer[JobDigest]
    acknowledged: _containers.RepeatedCompositeFieldContainer[JobDigest]
    reregister: bool
    def __init__(self, stop: _Optional[_Iterable[_Union[JobDigest, _Mapping]]] = ..., acknowledged: _Optional[_Iterable[_Union[JobDigest, _Mapping]]] = ..., reregister: _Optional[bool] = ...) -> None: ...

class JobReport(_message.Message):
    __slots__ = ("seq", "kind", "job", "metrics", "metric_rows")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    JOB_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    METRIC_ROWS_FIELD_NUMBER: _ClassVar[int]
    seq: int
    kind: str
    job: _common_pb2.JobStatus
    metrics: _containers.RepeatedCompositeFieldContainer[_common_pb2.MetricRow]
    metric_rows: int
    def __init__(self, seq: _Optional[int] = ..., kind: _Optional[str] = ..., job: _Optional[_Union[_common_pb2.JobStatus, _Mapping]] = ..., metrics: _Optional[_Iterable[_Union[_common_pb2.MetricRow, _Mapping]]] = ..., metric_rows: _Optional[int] = ...) -> None: ...

class ReportRequest(_message.Message):
    __slots__ = ("node_name", "reports")
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    REPORTS_FIELD_NUMBER: _ClassVar[int]
    node_name: str
    reports: _containers.RepeatedCompositeFieldContainer[JobReport]
    def __init__(self, node_name: _Optional[str] = ..., reports: _Optional[_Iterable[_Union[JobReport, _Mapping]]] = ...) -> None: ...

class ReportResponse(_message.Message):
    __slots__ = ("acked_seq", "acknowledged", "reregister")
    ACKED_SEQ_FIELD_NUMBER: _ClassVar[int]
    ACKNOWLEDGED_FIELD_NUMBER: _ClassVar[int]
    REREGISTER_FIELD_NUMBER: _ClassVar[int]
    acked_seq: int
    acknowledged: _containers.RepeatedCompositeFieldContainer[JobDigest]
    reregister: bool
    def __init__(self, acked_seq: _Optional[int] = ..., acknowledged: _Optional[_Iterable[_Union[JobDigest, _Mapping]]] = ..., reregister: _Optional[bool] = ...) -> None: ...

class TokenInfo(_message.Message):
    __slots__ = ("id", "name", "role", "created_at", "expires_at", "revoked_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    REVOKED_AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    role: str
    created_at: _timestamp_pb2.Timestamp
    expires_at: _timestamp_pb2.Timestamp
    revoked_at: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., role: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., revoked_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CreateTokenRequest(_message.Message):
    __slots__ = ("name", "role", "expires_in_seconds")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_IN_SECONDS_FIELD_NUMBER: _ClassVar[int]
    name: str
    role: str
    expires_in_seconds: int
    def __init__(self, name: _Optional[str] = ..., role: _Optional[str] = ..., expires_in_seconds: _Optional[int] = ...) -> None: ...

class CreateTokenResponse(_message.Message):
    __slots__ = ("token", "info")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    INFO_FIELD_NUMBER: _ClassVar[int]
    token: str
    info: TokenInfo
    def __init__(self, token: _Optional[str] = ..., info: _Optional[_Union[TokenInfo, _Mapping]] = ...) -> None: ...

class ListTokensRequest(_message.Message):
    __slots__ = ("include_revoked",)
    INCLUDE_REVOKED_FIELD_NUMBER: _ClassVar[int]
    include_revoked: bool
    def __init__(self, include_revoked: _Optional[bool] = ...) -> None: ...

class ListTokensResponse(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[TokenInfo]
    def __init__(self, items: _Optional[_Iterable[_Union[TokenInfo, _Mapping]]] = ...) -> None: ...

class RevokeTokenRequest(_message.Message):
    __slots__ = ("ident",)
    IDENT_FIELD_NUMBER: _ClassVar[int]
    ident: str
    def __init__(self, ident: _Optional[str] = ...) -> None: ...

class RevokeTokenResponse(_message.Message):
    __slots__ = ("ids",)
    IDS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, ids: _Optional[_Iterable[str]] = ...) -> None: ...

class Quota(_message.Message):
    __slots__ = ("owner", "gpus", "used", "updated_at", "updated_by")
    OWNER_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    USED_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_BY_FIELD_NUMBER: _ClassVar[int]
    owner: str
    gpus: int
    used: int
    updated_at: _timestamp_pb2.Timestamp
    updated_by: str
    def __init__(self, owner: _Optional[str] = ..., gpus: _Optional[int] = ..., used: _Optional[int] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_by: _Optional[str] = ...) -> None: ...

class SetQuotaRequest(_message.Message):
    __slots__ = ("owner", "gpus", "clear")
    OWNER_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    CLEAR_FIELD_NUMBER: _ClassVar[int]
    owner: str
    gpus: int
    clear: bool
    def __init__(self, owner: _Optional[str] = ..., gpus: _Optional[int] = ..., clear: _Optional[bool] = ...) -> None: ...

class ListQuotasRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListQuotasResponse(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[Quota]
    def __init__(self, items: _Optional[_Iterable[_Union[Quota, _Mapping]]] = ...) -> None: ...

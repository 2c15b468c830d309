import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JobType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_TYPE_UNSPECIFIED: _ClassVar[JobType]
    JOB_TYPE_TRAIN: _ClassVar[JobType]
    JOB_TYPE_EVAL: _ClassVar[JobType]

class AgentJobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AGENT_JOB_STATE_UNSPECIFIED: _ClassVar[AgentJobState]
    AGENT_JOB_STATE_PENDING: _ClassVar[AgentJobState]
    AGENT_JOB_STATE_RUNNING: _ClassVar[AgentJobState]
    AGENT_JOB_STATE_SUCCEEDED: _ClassVar[AgentJobState]
    AGENT_JOB_STATE_FAILED: _ClassVar[AgentJobState]
    AGENT_JOB_STATE_STOPPED: _ClassVar[AgentJobState]
    AGENT_JOB_STATE_LOST: _ClassVar[AgentJobState]
JOB_TYPE_UNSPECIFIED: JobType
JOB_TYPE_TRAIN: JobType
JOB_TYPE_EVAL: JobType
AGENT_JOB_STATE_UNSPECIFIED: AgentJobState
AGENT_JOB_STATE_PENDING: AgentJobState
AGENT_JOB_STATE_RUNNING: AgentJobState
AGENT_JOB_STATE_SUCCEEDED: AgentJobState
AGENT_JOB_STATE_FAILED: AgentJobState
AGENT_JOB_STATE_STOPPED: AgentJobState
AGENT_JOB_STATE_LOST: AgentJobState

class Mount(_message.Message):
    __slots__ = ("source", "target")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    source: str
    target: str
    def __init__(self, source: _Optional[str] = ..., target: _Optional[str] = ...) -> None: ...

class Resources(_message.Message):
    __slots__ = ("cpu_millis", "memory_bytes")
    CPU_MILLIS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    cpu_millis: int
    memory_bytes: int
    def __init__(self, cpu_millis: _Optional[int] = ..., memory_bytes: _Optional[int] = ...) -> None: ...

class JobSpec(_message.Message):
    __slots__ = ("image", "command", "env", "output_dir", "mounts", "total_epoch", "val_interval", "params_json", "job_type", "shm_size_bytes", "resources", "workdir", "user", "dataset")
    class EnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_DIR_FIELD_NUMBER: _ClassVar[int]
    MOUNTS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_EPOCH_FIELD_NUMBER: _ClassVar[int]
    VAL_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    PARAMS_JSON_FIELD_NUMBER: _ClassVar[int]
    JOB_TYPE_FIELD_NUMBER: _ClassVar[int]
    SHM_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    WORKDIR_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    image: str
    command: _containers.RepeatedScalarFieldContainer[str]
    env: _containers.ScalarMap[str, str]
    output_dir: str
    mounts: _containers.RepeatedCompositeFieldContainer[Mount]
    total_epoch: int
    val_interval: int
    params_json: str
    job_type: JobType
    shm_size_bytes: int
    resources: Resources
    workdir: str
    user: str
    dataset: str
    def __init__(self, image: _Optional[str] = ..., command: _Optional[_Iterable[str]] = ..., env: _Optional[_Mapping[str, str]] = ..., output_dir: _Optional[str] = ..., mounts: _Optional[_Iterable[_Union[Mount, _Mapping]]] = ..., total_epoch: _Optional[int] = ..., val_interval: _Optional[int] = ..., params_json: _Optional[str] = ..., job_type: _Optional[_Union[JobType, str]] = ..., shm_size_bytes: _Optional[int] = ..., resources: _Optional[_Union[Resources, _Mapping]] = ..., workdir: _Optional[str] = ..., user: _Optional[str] = ..., dataset: _Optional[str] = ...) -> None: ...

class MetricRow(_message.Message):
    __slots__ = ("split", "epoch", "values")
    class ValuesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    split: str
    epoch: int
    values: _containers.ScalarMap[str, float]
    def __init__(self, split: _Optional[str] = ..., epoch: _Optional[int] = ..., values: _Optional[_Mapping[str, float]] = ...) -> None: ...

class ProbeResult(_message.Message):
    __slots__ = ("completed", "reason", "val_lines", "expected_lines", "checkpoints", "best_checkpoint", "has_result_zip", "metrics", "best_epoch", "best_metric_key", "best_metric_mode", "latest_checkpoint_epoch", "latest_checkpoint", "total_epoch")
    COMPLETED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    VAL_LINES_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_LINES_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINTS_FIELD_NUMBER: _ClassVar[int]
    BEST_CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    HAS_RESULT_ZIP_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    BEST_EPOCH_FIELD_NUMBER: _ClassVar[int]
    BEST_METRIC_KEY_FIELD_NUMBER: _ClassVar[int]
    BEST_METRIC_MODE_FIELD_NUMBER: _ClassVar[int]
    LATEST_CHECKPOINT_EPOCH_FIELD_NUMBER: _ClassVar[int]
    LATEST_CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    TOTAL_EPOCH_FIELD_NUMBER: _ClassVar[int]
    completed: bool
    reason: str
    val_lines: int
    expected_lines: int
    checkpoints: int
    best_checkpoint: str
    has_result_zip: bool
    metrics: _containers.RepeatedCompositeFieldContainer[MetricRow]
    best_epoch: int
    best_metric_key: str
    best_metric_mode: str
    latest_checkpoint_epoch: int
    latest_checkpoint: str
    total_epoch: int
    def __init__(self, completed: _Optional[bool] = ..., reason: _Optional[str] = ..., val_lines: _Optional[int] = ..., expected_lines: _Optional[int] = ..., checkpoints: _Optional[int] = ..., best_checkpoint: _Optional[str] = ..., has_result_zip: _Optional[bool] = ..., metrics: _Optional[_Iterable[_Union[MetricRow, _Mapping]]] = ..., best_epoch: _Optional[int] = ..., best_metric_key: _Optional[str] = ..., best_metric_mode: _Optional[str] = ..., latest_checkpoint_epoch: _Optional[int] = ..., latest_checkpoint: _Optional[str] = ..., total_epoch: _Optional[int] = ...) -> None: ...

class Progress(_message.Message):
    __slots__ = ("current_epoch", "total_epoch", "last_metrics", "updated_at")
    class LastMetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    CURRENT_EPOCH_FIELD_NUMBER: _ClassVar[int]
    TOTAL_EPOCH_FIELD_NUMBER: _ClassVar[int]
    LAST_METRICS_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    current_epoch: int
    total_epoch: int
    last_metrics: _containers.ScalarMap[str, float]
    updated_at: _timestamp_pb2.Timestamp
    def __init__(self, current_epoch: _Optional[int] = ..., total_epoch: _Optional[int] = ..., last_metrics: _Optional[_Mapping[str, float]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class JobStatus(_message.Message):
    __slots__ = ("job_id", "attempt", "state", "exit_code", "signal", "created_at", "started_at", "finished_at", "gpu_indices", "runtime", "runtime_id", "message", "probe", "progress", "output_dir", "acknowledged", "stop_requested", "job_type", "log_tail", "gpu_usage")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    GPU_INDICES_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    PROBE_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_DIR_FIELD_NUMBER: _ClassVar[int]
    ACKNOWLEDGED_FIELD_NUMBER: _ClassVar[int]
    STOP_REQUESTED_FIELD_NUMBER: _ClassVar[int]
    JOB_TYPE_FIELD_NUMBER: _ClassVar[int]
    LOG_TAIL_FIELD_NUMBER: _ClassVar[int]
    GPU_USAGE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    attempt: int
    state: AgentJobState
    exit_code: int
    signal: int
    created_at: _timestamp_pb2.Timestamp
    started_at: _timestamp_pb2.Timestamp
    finished_at: _timestamp_pb2.Timestamp
    gpu_indices: _containers.RepeatedScalarFieldContainer[int]
    runtime: str
    runtime_id: str
    message: str
    probe: ProbeResult
    progress: Progress
    output_dir: str
    acknowledged: bool
    stop_requested: bool
    job_type: JobType
    log_tail: bytes
    gpu_usage: GpuUsage
    def __init__(self, job_id: _Optional[str] = ..., attempt: _Optional[int] = ..., state: _Optional[_Union[AgentJobState, str]] = ..., exit_code: _Optional[int] = ..., signal: _Optional[int] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., gpu_indices: _Optional[_Iterable[int]] = ..., runtime: _Optional[str] = ..., runtime_id: _Optional[str] = ..., message: _Optional[str] = ..., probe: _Optional[_Union[ProbeResult, _Mapping]] = ..., progress: _Optional[_Union[Progress, _Mapping]] = ..., output_dir: _Optional[str] = ..., acknowledged: _Optional[bool] = ..., stop_requested: _Optional[bool] = ..., job_type: _Optional[_Union[JobType, str]] = ..., log_tail: _Optional[bytes] = ..., gpu_usage: _Optional[_Union[GpuUsage, _Mapping]] = ...) -> None: ...

class GpuUsage(_message.Message):
    __slots__ = ("gpu_seconds", "energy_joules", "peak_memory_bytes", "mean_utilization", "samples")
    GPU_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ENERGY_JOULES_FIELD_NUMBER: _ClassVar[int]
    PEAK_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEAN_UTILIZATION_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    gpu_seconds: float
    energy_joules: float
    peak_memory_bytes: int
    mean_utilization: float
    samples: int
    def __init__(self, gpu_seconds: _Optional[float] = ..., energy_joules: _Optional[float] = ..., peak_memory_bytes: _Optional[int] = ..., mean_utilization: _Optional[float] = ..., samples: _Optional[int] = ...) -> None: ...

class GpuProcess(_message.Message):
    __slots__ = ("pid", "used_bytes", "kind", "job_id")
    PID_FIELD_NUMBER: _ClassVar[int]
    USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    pid: int
    used_bytes: int
    kind: str
    job_id: str
    def __init__(self, pid: _Optional[int] = ..., used_bytes: _Optional[int] = ..., kind: _Optional[str] = ..., job_id: _Optional[str] = ...) -> None: ...

class GpuInfo(_message.Message):
    __slots__ = ("index", "uuid", "name", "utilization_gpu", "utilization_memory", "memory_used_bytes", "memory_total_bytes", "temperature_c", "power_w", "power_limit_w", "ecc_errors", "healthy", "assigned_job_id", "health_reason", "processes")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    UUID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    UTILIZATION_GPU_FIELD_NUMBER: _ClassVar[int]
    UTILIZATION_MEMORY_FIELD_NUMBER: _ClassVar[int]
    MEMORY_USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_C_FIELD_NUMBER: _ClassVar[int]
    POWER_W_FIELD_NUMBER: _ClassVar[int]
    POWER_LIMIT_W_FIELD_NUMBER: _ClassVar[int]
    ECC_ERRORS_FIELD_NUMBER: _ClassVar[int]
    HEALTHY_FIELD_NUMBER: _ClassVar[int]
    ASSIGNED_JOB_ID_FIELD_NUMBER: _ClassVar[int]
    HEALTH_REASON_FIELD_NUMBER: _ClassVar[int]
    PROCESSES_FIELD_NUMBER: _ClassVar[int]
    index: int
    uuid: str
    name: str
    utilization_gpu: float
    utilization_memory: float
    memory_used_bytes: int
    memory_total_bytes: int
    temperature_c: float
    power_w: float
    power_limit_w: float
    ecc_errors: int
    healthy: bool
    assigned_job_id: str
    health_reason: str
    processes: _containers.RepeatedCompositeFieldContainer[GpuProcess]
    def __init__(self, index: _Optional[int] = ..., uuid: _Optional[str] = ..., name: _Optional[str] = ..., utilization_gpu: _Optional[float] = ..., utilization_memory: _Optional[float] = ..., memory_used_bytes: _Optional[int] = ..., memory_total_bytes: _Optional[int] = ..., temperature_c: _Optional[float] = ..., power_w: _Optional[float] = ..., power_limit_w: _Optional[float] = ..., ecc_errors: _Optional[int] = ..., healthy: _Optional[bool] = ..., assigned_job_id: _Optional[str] = ..., health_reason: _Optional[str] = ..., processes: _Optional[_Iterable[_Union[GpuProcess, _Mapping]]] = ...) -> None: ...

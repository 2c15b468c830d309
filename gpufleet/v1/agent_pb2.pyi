import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from gpufleet.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class LaunchRequest(_message.Message):
    __slots__ = ("job_id", "attempt", "spec", "gpu_indices", "owner")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    GPU_INDICES_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    attempt: int
    spec: _common_pb2.JobSpec
    gpu_indices: _containers.RepeatedScalarFieldContainer[int]
    owner: str
    def __init__(self, job_id: _Optional[str] = ..., attempt: _Optional[int] = ..., spec: _Optional[_Union[_common_pb2.JobSpec, _Mapping]] = ..., gpu_indices: _Optional[_Iterable[int]] = ..., owner: _Optional[str] = ...) -> None: ...

class StopRequest(_message.Message):
    __slots__ = ("job_id", "grace_seconds", "attempt")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    GRACE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    grace_seconds: int
    attempt: int
    def __init__(self, job_id: _Optional[str] = ..., grace_seconds: _Optional[int] = ..., attempt: _Optional[int] = ...) -> None: ...

class InspectRequest(_message.Message):
    __slots__ = ("job_id", "attempt")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    attempt: int
    def __init__(self, job_id: _Optional[str] = ..., attempt: _Optional[int] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("states",)
    STATES_FIELD_NUMBER: _ClassVar[int]
    states: _containers.RepeatedScalarFieldContainer[_common_pb2.AgentJobState]
    def __init__(self, states: _Optional[_Iterable[_Union[_common_pb2.AgentJobState, str]]] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs",)
    JOBS_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[_common_pb2.JobStatus]
    def __init__(self, jobs: _Optional[_Iterable[_Union[_common_pb2.JobStatus, _Mapping]]] = ...) -> None: ...

class WatchEventsRequest(_message.Message):
    __slots__ = ("after_seq", "no_follow")
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    NO_FOLLOW_FIELD_NUMBER: _ClassVar[int]
    after_seq: int
    no_follow: bool
    def __init__(self, after_seq: _Optional[int] = ..., no_follow: _Optional[bool] = ...) -> None: ...

class JobEvent(_message.Message):
    __slots__ = ("seq", "time", "kind", "job")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    JOB_FIELD_NUMBER: _ClassVar[int]
    seq: int
    time: _timestamp_pb2.Timestamp
    kind: str
    job: _common_pb2.JobStatus
    def __init__(self, seq: _Optional[int] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., kind: _Optional[str] = ..., job: _Optional[_Union[_common_pb2.JobStatus, _Mapping]] = ...) -> None: ...

class StreamLogsRequest(_message.Message):
    __slots__ = ("job_id", "follow", "tail_lines", "attempt")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    TAIL_LINES_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    follow: bool
    tail_lines: int
    attempt: int
    def __init__(self, job_id: _Optional[str] = ..., follow: _Optional[bool] = ..., tail_lines: _Optional[int] = ..., attempt: _Optional[int] = ...) -> None: ...

class LogChunk(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...

class ReadOutputRequest(_message.Message):
    __slots__ = ("output_dir", "path", "max_bytes")
    OUTPUT_DIR_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    MAX_BYTES_FIELD_NUMBER: _ClassVar[int]
    output_dir: str
    path: str
    max_bytes: int
    def __init__(self, output_dir: _Optional[str] = ..., path: _Optional[str] = ..., max_bytes: _Optional[int] = ...) -> None: ...

class OutputChunk(_message.Message):
    __slots__ = ("data", "size")
    DATA_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    size: int
    def __init__(self, data: _Optional[bytes] = ..., size: _Optional[int] = ...) -> None: ...

class ProbeOutputsRequest(_message.Message):
    __slots__ = ("job_id", "output_dir", "total_epoch", "val_interval", "params_json", "best_metric_key", "best_metric_mode")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_DIR_FIELD_NUMBER: _ClassVar[int]
    TOTAL_EPOCH_FIELD_NUMBER: _ClassVar[int]
    VAL_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    PARAMS_JSON_FIELD_NUMBER: _ClassVar[int]
    BEST_METRIC_KEY_FIELD_NUMBER: _ClassVar[int]
    BEST_METRIC_MODE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    output_dir: str
    total_epoch: int
    val_interval: int
    params_json: str
    best_metric_key: str
    best_metric_mode: str
    def __init__(self, job_id: _Optional[str] = ..., output_dir: _Optional[str] = ..., total_epoch: _Optional[int] = ..., val_interval: _Optional[int] = ..., params_json: _Optional[str] = ..., best_metric_key: _Optional[str] = ..., best_metric_mode: _Optional[str] = ...) -> None: ...

class GetNodeRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class NodeInfo(_message.Message):
    __slots__ = ("hostname", "agent_version", "runtime", "uptime_seconds", "gpus", "gpu_source", "node_name", "jobs_held", "jobs_running", "gpus_sampled_at", "last_event_seq")
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    UPTIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    GPU_SOURCE_FIELD_NUMBER: _ClassVar[int]
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    JOBS_HELD_FIELD_NUMBER: _ClassVar[int]
    JOBS_RUNNING_FIELD_NUMBER: _ClassVar[int]
    GPUS_SAMPLED_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_EVENT_SEQ_FIELD_NUMBER: _ClassVar[int]
    hostname: str
    agent_version: str
    runtime: str
    uptime_seconds: float
    gpus: _containers.RepeatedCompositeFieldContainer[_common_pb2.GpuInfo]
    gpu_source: str
    node_name: str
    jobs_held: int
    jobs_running: int
    gpus_sampled_at: _timestamp_pb2.Timestamp
    last_event_seq: int
    def __init__(self, hostname: _Optional[str] = ..., agent_version: _Optional[str] = ..., runtime: _Optional[str] = ..., uptime_seconds: _Optional[float] = ..., gpus: _Optional[_Iterable[_Union[_common_pb2.GpuInfo, _Mapping]]] = ..., gpu_source: _Optional[str] = ..., node_name: _Optional[str] = ..., jobs_held: _Optional[int] = ..., jobs_running: _Optional[int] = ..., gpus_sampled_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_event_seq: _Optional[int] = ...) -> None: ...

class StageLink(_message.Message):
    __slots__ = ("split", "dataset_id", "input1", "input2", "label", "label_json")
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    INPUT1_FIELD_NUMBER: _ClassVar[int]
    INPUT2_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    LABEL_JSON_FIELD_NUMBER: _ClassVar[int]
    split: str
    dataset_id: str
    input1: str
    input2: str
    label: str
    label_json: str
    def __init__(self, split: _Optional[str] = ..., dataset_id: _Optional[str] = ..., input1: _Optional[str] = ..., input2: _Optional[str] = ..., label: _Optional[str] = ..., label_json: _Optional[str] = ...) -> None: ...

class StageDatasetRequest(_message.Message):
    __slots__ = ("stage_id", "links")
    STAGE_ID_FIELD_NUMBER: _ClassVar[int]
    LINKS_FIELD_NUMBER: _ClassVar[int]
    stage_id: str
    links: _containers.RepeatedCompositeFieldContainer[StageLink]
    def __init__(self, stage_id: _Optional[str] = ..., links: _Optional[_Iterable[_Union[StageLink, _Mapping]]] = ...) -> None: ...

class StageDatasetResponse(_message.Message):
    __slots__ = ("stage_dir", "made", "skipped", "extracted", "counts", "warnings")
    class CountsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    STAGE_DIR_FIELD_NUMBER: _ClassVar[int]
    MADE_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    EXTRACTED_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    stage_dir: str
    made: int
    skipped: int
    extracted: int
    counts: _containers.ScalarMap[str, int]
    warnings: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, stage_dir: _Optional[str] = ..., made: _Optional[int] = ..., skipped: _Optional[int] = ..., extracted: _Optional[int] = ..., counts: _Optional[_Mapping[str, int]] = ..., warnings: _Optional[_Iterable[str]] = ...) -> None: ...

class AcknowledgeRequest(_message.Message):
    __slots__ = ("job_id", "attempt")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    attempt: int
    def __init__(self, job_id: _Optional[str] = ..., attempt: _Optional[int] = ...) -> None: ...

class AcknowledgeResponse(_message.Message):
    __slots__ = ("dropped",)
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    dropped: bool
    def __init__(self, dropped: _Optional[bool] = ...) -> None: ...

class SetGpuHealthRequest(_message.Message):
    __slots__ = ("index", "healthy", "reason")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    HEALTHY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    index: int
    healthy: bool
    reason: str
    def __init__(self, index: _Optional[int] = ..., healthy: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...

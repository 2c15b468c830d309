"""JSON HTTP API: thin handlers that translate to Coordinator RPCs and gRPC codes to HTTP statuses."""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import grpc
from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from google.protobuf import json_format
from google.protobuf.message import Message

from gpufleet import auth, tls
from gpufleet.v1 import agent_pb2 as apb
from gpufleet.v1 import coordinator_pb2 as cpb
from gpufleet.v1 import coordinator_pb2_grpc
from gpufleet.web.live import Poller

STATIC = Path(__file__).parent / "static"

# How a refusal reads over HTTP; anything else from the coordinator is its fault: 502.
HTTP_OF = {
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.INVALID_ARGUMENT: 422,
    grpc.StatusCode.OUT_OF_RANGE: 422,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
TIMEOUT = 10.0
Page = Annotated[int, Query(ge=0, le=1_000_000)]
Size = Annotated[int, Query(ge=1, le=500)]
MODEL_ACTIONS = {"run": "RunTrain", "restart": "RestartTrain", "resume": "ResumeTrain", "cancel": "CancelTrain",
                 "cancel-test": "CancelTest", "sync": "SyncStatus"}


def as_dict(msg: Message) -> dict[str, Any]:
    return json_format.MessageToDict(msg, preserving_proto_field_name=True)


def page_of(items: list[Message], total: int, page: int, size: int) -> dict[str, Any]:
    """The old list API's page shape: content, totalElements, totalPages."""
    return {"content": [as_dict(m) for m in items], "totalElements": total,
            "totalPages": math.ceil(total / size) if size else 0, "page": page, "size": size}


def enum_value(enum: Any, prefix: str, name: str) -> int:
    """`name` (e.g. "completed") as the proto enum number; unknown names are bad input (422)."""
    if not name:
        return 0
    try:
        return int(enum.Value(prefix + name.upper()))
    except ValueError:
        raise BadInput(f"unknown status {name!r}") from None


class BadInput(Exception):
    pass


def stub(request: Request, authorization: Annotated[str, Header(include_in_schema=False)] = "",
         ) -> coordinator_pb2_grpc.CoordinatorStub:
    """The caller's bearer token is passed through: the coordinator decides what a role may do."""
    token = authorization.removeprefix("Bearer ").strip() or None
    return coordinator_pb2_grpc.CoordinatorStub(auth.with_token(request.app.state.channel, token))


Stub = Annotated[coordinator_pb2_grpc.CoordinatorStub, Depends(stub)]


def role_of(s: coordinator_pb2_grpc.CoordinatorStub) -> str:
    """There is no WhoAmI RPC: probe with requests that are refused as bad input after the role check,
    so they change nothing (drain is for admins, cancel for users; a viewer is refused both)."""
    for role, probe in (("admin", lambda: s.DrainNode(cpb.NodeRef(name=""), timeout=TIMEOUT)),
                        ("user", lambda: s.CancelJob(cpb.JobRef(job_id=""), timeout=TIMEOUT))):
        try:
            probe()
            return role
        except grpc.RpcError as exc:
            if exc.code() not in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):  # type: ignore[attr-defined]
                return role
    return "viewer"


def create_app(coordinator: str, tls_ca: str = "", tls_cert: str = "", tls_key: str = "",
               poll_token: str | None = None) -> FastAPI:
    """`poll_token` is the web process's own (viewer) token for the live-update poller."""
    app = FastAPI(title="gpufleet", version="1", openapi_url="/api/openapi.json", docs_url="/api/docs")
    app.state.channel = tls.dial(coordinator, tls_ca, tls_cert, tls_key)
    poller = Poller(coordinator_pb2_grpc.CoordinatorStub(auth.with_token(app.state.channel, poll_token)))
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/api/events", include_in_schema=False)
    async def events() -> StreamingResponse:
        """Server-sent events: a message whenever models, jobs or nodes change."""
        return StreamingResponse(poller.stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store"})

    @app.get("/api/whoami")
    def whoami(s: Stub) -> dict[str, str]:
        return {"role": role_of(s)}

    @app.exception_handler(grpc.RpcError)
    async def rpc_error(_: Request, exc: grpc.RpcError) -> JSONResponse:
        code = exc.code()  # type: ignore[attr-defined]
        return JSONResponse({"error": code.name, "message": exc.details()},  # type: ignore[attr-defined]
                            status_code=HTTP_OF.get(code, 502))

    @app.exception_handler(BadInput)
    async def bad_input(_: Request, exc: BadInput) -> JSONResponse:
        return JSONResponse({"error": "INVALID_ARGUMENT", "message": str(exc)}, status_code=422)

    def call(fn: Callable[..., Message], req: Message) -> dict[str, Any]:
        return as_dict(fn(req, timeout=TIMEOUT))

    @app.get("/api/models")
    def list_models(s: Stub, status: str = "", model_no: str = "", page: Page = 0,
                    size: Size = 20) -> dict[str, Any]:
        st = enum_value(cpb.ModelStatus, "MODEL_STATUS_", status)
        r = s.ListModels(cpb.ListModelsRequest(status=st, model_no=model_no, page=page, size=size),  # type: ignore[arg-type]
                         timeout=TIMEOUT)
        return page_of(list(r.items), r.total_elements, page, size)

    @app.post("/api/models", status_code=201)
    def create_model(body: dict[str, Any], s: Stub) -> dict[str, Any]:
        try:
            req = json_format.ParseDict(body, cpb.CreateModelRequest())
        except (json_format.ParseError, TypeError, ValueError) as exc:
            raise BadInput(str(exc)) from None
        return call(s.CreateModel, req)

    @app.get("/api/models/{uuid}")
    def get_model(uuid: str, s: Stub) -> dict[str, Any]:
        return call(s.GetModel, cpb.ModelRef(uuid=uuid))

    @app.post("/api/models/{uuid}/test")
    def test_model(uuid: str, epoch: Annotated[int, Query(ge=0, le=2**31 - 1)], s: Stub) -> dict[str, Any]:
        return call(s.RunTest, cpb.RunTestRequest(uuid=uuid, epoch=epoch))

    @app.post("/api/models/{uuid}/{action}")
    def model_action(uuid: str, action: str, s: Stub) -> dict[str, Any]:
        """run, restart, resume, cancel, cancel-test, sync: the action matrix is the coordinator's (409)."""
        rpc = MODEL_ACTIONS.get(action)
        if rpc is None:
            return JSONResponse({"error": "NOT_FOUND", "message": f"no action {action!r}"},  # type: ignore[return-value]
                                status_code=404)
        return call(getattr(s, rpc), cpb.ModelRef(uuid=uuid))

    @app.get("/api/jobs")
    def list_jobs(s: Stub, status: str = "", model: str = "", node: str = "", page: Page = 0,
                  size: Size = 20) -> dict[str, Any]:
        st = enum_value(cpb.JobStatusCode, "JOB_STATUS_CODE_", status)
        r = s.ListJobs(cpb.ListJobsQuery(status=st, model_uuid=model, node=node, page=page, size=size),  # type: ignore[arg-type]
                       timeout=TIMEOUT)
        return page_of(list(r.jobs), r.total_elements, page, size)

    @app.get("/api/jobs/{job_id}")
    def get_job(job_id: str, s: Stub) -> dict[str, Any]:
        return call(s.GetJob, cpb.JobRef(job_id=job_id))

    @app.post("/api/jobs/{job_id}/cancel")
    def cancel_job(job_id: str, s: Stub) -> dict[str, Any]:
        return call(s.CancelJob, cpb.JobRef(job_id=job_id))

    @app.get("/api/jobs/{job_id}/metrics")
    def job_metrics(job_id: str, s: Stub) -> dict[str, Any]:
        return call(s.GetJobMetrics, cpb.JobRef(job_id=job_id))

    @app.get("/api/jobs/{job_id}/logs", response_class=StreamingResponse)
    def job_logs(job_id: str, s: Stub, follow: bool = False,
                 tail: Annotated[int, Query(ge=0, le=1_000_000)] = 0) -> StreamingResponse:
        """The job's output, proxied from its agent; `follow` streams until the job ends."""
        chunks = s.StreamJobLogs(apb.StreamLogsRequest(job_id=job_id, follow=follow, tail_lines=tail),
                                 timeout=None if follow else TIMEOUT)
        first = next(chunks, None)  # the first read raises a refusal while a status can still be sent

        def rest() -> Iterator[bytes]:
            if first is not None:
                yield first.data
            try:
                for c in chunks:
                    yield c.data
            except grpc.RpcError:
                return  # the stream broke after the headers went out: end the body

        return StreamingResponse(rest(), media_type="text/plain; charset=utf-8")

    @app.get("/api/pipelines/{pipeline_id}")
    def get_pipeline(pipeline_id: str, s: Stub) -> dict[str, Any]:
        return call(s.GetPipeline, cpb.PipelineRef(pipeline_id=pipeline_id))

    @app.get("/api/arrays/{array_id}")
    def get_array(array_id: str, s: Stub) -> dict[str, Any]:
        return call(s.GetArray, cpb.ArrayRef(array_id=array_id))

    @app.get("/api/nodes")
    def list_nodes(s: Stub) -> dict[str, Any]:
        return call(s.ListNodes, cpb.ListNodesRequest())

    @app.post("/api/nodes/{name}/drain")
    def drain(name: str, s: Stub) -> dict[str, Any]:
        return call(s.DrainNode, cpb.NodeRef(name=name))

    @app.post("/api/nodes/{name}/undrain")
    def undrain(name: str, s: Stub) -> dict[str, Any]:
        return call(s.UndrainNode, cpb.NodeRef(name=name))

    return app

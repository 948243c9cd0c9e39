"""Long work as a task: submit -> id, then status and result from ANY gateway replica, independent of the
client's connection.

The task runs as an asyncio task in the replica that accepted it (it awaits the model service like any
request, so admission, batching and timeouts apply). Its record and, when done, its rendered response
(the same bytes the plain route answers) live in the state store (runtime.core.state: this process, or
Redis for several replicas), kept `ttl` seconds after the end; a result over `max_result_bytes` ends the
task failed, saying so. At most `max_tasks` run in one replica at once (429 past that).

A replica that dies mid-task cannot finish it: the owner renews a lease on the record every LEASE/3 s, and
whoever reads a running task whose lease has expired marks it failed with that reason (never "running"
forever). DELETE cancels a running task (its owner sees the flag within LEASE/3 s, or at once when it is
the replica asked) and forgets a finished one. Times are wall-clock seconds (replicas' clocks in sync).
"""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from typing import Awaitable, Callable, Literal

from fastapi import Depends
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from services.gateway.deps import gateway

from services.runtime.core.errors import Conflict, NotFound, QwenError, TooManyRequests
from services.runtime.core.state import StateUnavailable
from services.runtime.edge.http import error_doc
from services.runtime.core.logging import get_logger

log = get_logger("tasks")

LEASE_SECONDS = 15.0
Status = Literal["running", "succeeded", "failed", "cancelled"]


class TaskRecord(BaseModel):
    task_id: str
    kind: str
    status: Status = "running"
    created_at: float
    finished_at: float | None = None
    error: dict | None = None  # QwenError.payload() of a failed task
    owner: str = ""  # the replica running it
    lease_until: float = 0.0
    cancel: bool = False  # DELETE asked while it ran

    @property
    def finished(self) -> bool:
        return self.status != "running"

    def describe(self) -> dict:
        out = {"task_id": self.task_id, "kind": self.kind, "status": self.status, "created_at": self.created_at,
               "finished_at": self.finished_at}
        if self.error is not None:
            out["error"] = QwenError.from_payload(self.error).envelope()["error"]
        return out


class StoredResponse(BaseModel):
    status_code: int
    headers: list[tuple[str, str]]
    body: str  # base64

    @classmethod
    def of(cls, response: Response) -> "StoredResponse":
        headers = [(k, v) for k, v in response.headers.items() if k.lower() != "content-length"]
        return cls(status_code=response.status_code, headers=headers,
                   body=base64.b64encode(bytes(response.body)).decode("ascii"))

    def response(self) -> Response:
        return Response(content=base64.b64decode(self.body), status_code=self.status_code,
                        headers=dict(self.headers))


def _record_key(task_id: str) -> str:
    return f"task:{task_id}"


def _result_key(task_id: str) -> str:
    return f"task:{task_id}:result"


class TaskStore:
    def __init__(self, store, *, ttl: float = 3600.0, max_tasks: int = 64, max_result_bytes: int = 32 << 20,
                 lease: float = LEASE_SECONDS):
        self.store = store
        self.ttl = ttl
        self.max_tasks = max_tasks
        self.max_result_bytes = max_result_bytes
        self.lease = lease
        self.replica = uuid.uuid4().hex  # this process, as a task's owner
        self._local: dict[str, asyncio.Task] = {}

    async def _save(self, rec: TaskRecord) -> None:
        # A running record outlives its lease a little (then it reads as failed); a finished one lives `ttl`.
        ttl = self.ttl if rec.finished else max(self.ttl, self.lease * 4)
        await self.store.set(_record_key(rec.task_id), rec.model_dump_json().encode(), ttl)

    async def _load(self, task_id: str) -> TaskRecord | None:
        raw = await self.store.get(_record_key(task_id))
        return TaskRecord.model_validate_json(raw) if raw is not None else None

    async def submit(self, kind: str, work: Callable[[], Awaitable[Response]]) -> TaskRecord:
        """Start `work` (which answers the rendered response) as a task; 429 past max_tasks running here,
        503 when the state store is unreachable (nothing started)."""
        if len(self._local) >= self.max_tasks:
            raise TooManyRequests(f"too many tasks running on this gateway ({self.max_tasks}); retry later",
                                  code="too_many_tasks", retry_after=30)
        now = time.time()
        rec = TaskRecord(task_id=uuid.uuid4().hex, kind=kind, created_at=now, owner=self.replica,
                         lease_until=now + self.lease)
        await self._save(rec)
        # Not tied to the submitting request: a client that disconnects does not cancel it.
        self._local[rec.task_id] = asyncio.get_running_loop().create_task(self._run(rec, work),
                                                                          name=f"task-{rec.task_id}")
        return rec

    async def _run(self, rec: TaskRecord, work: Callable[[], Awaitable[Response]]) -> None:
        renew = asyncio.get_running_loop().create_task(self._renew(rec))
        stored: StoredResponse | None = None
        try:
            response = await work()
            if len(response.body) > self.max_result_bytes:
                raise QwenError(f"the result ({len(response.body)} bytes) is larger than this deployment keeps "
                                f"({self.max_result_bytes}, QWEN_TASK_MAX_RESULT_BYTES); use the plain route",
                                code="result_too_large")
            stored = StoredResponse.of(response)
            rec.status = "succeeded"
        except asyncio.CancelledError:
            rec.status = "cancelled"
        except QwenError as exc:
            rec.error, rec.status = exc.payload(), "failed"
        except Exception as exc:  # noqa: BLE001
            log.error("task failed", extra={"task_id": rec.task_id}, exc_info=True)
            rec.error, rec.status = QwenError(f"task failed: {type(exc).__name__}").payload(), "failed"
        finally:
            renew.cancel()
        rec.finished_at = time.time()
        try:
            current = await self._load(rec.task_id)
            if current is not None and current.cancel:
                return  # cancelled by DELETE meanwhile: its record already says so
            if stored is not None:
                await self.store.set(_result_key(rec.task_id), stored.model_dump_json().encode(), self.ttl)
            await self._save(rec)
        except StateUnavailable:
            # Its lease will expire and readers will see it failed: the result could not be kept.
            log.error("task result not stored: the state store is unreachable", extra={"task_id": rec.task_id})
        finally:
            self._local.pop(rec.task_id, None)  # after the record says how it ended

    async def _renew(self, rec: TaskRecord) -> None:
        """Keep the lease while the task runs; honour a DELETE seen in the record."""
        while True:
            await asyncio.sleep(self.lease / 3)
            try:
                current = await self._load(rec.task_id)
                if current is not None and current.cancel:
                    task = self._local.get(rec.task_id)
                    if task is not None:
                        task.cancel()
                    return
                rec.lease_until = time.time() + self.lease
                await self._save(rec)
            except StateUnavailable:
                log.warning("task lease not renewed: the state store is unreachable", extra={"task_id": rec.task_id})

    async def get(self, task_id: str, kind: str | None = None) -> TaskRecord:
        """The task's record (404 for an unknown, expired or other-kind id). A running task whose lease has
        expired is failed here, for good: the replica running it is gone."""
        rec = await self._load(task_id)
        if rec is None or (kind is not None and rec.kind != kind):
            raise NotFound(f"task {task_id!r} not found (unknown or expired)", param="task_id",
                           code="task_not_found")
        if not rec.finished and rec.lease_until < time.time():
            rec.status, rec.finished_at = "failed", time.time()
            rec.error = QwenError("the gateway replica running this task stopped before it finished (its lease "
                                  "expired); submit it again", code="task_lost", status=503,
                                  retry_after=1).payload()
            await self._save(rec)
        return rec

    async def result(self, task_id: str, kind: str | None = None, poll: str = "its status") -> Response:
        rec = await self.get(task_id, kind)
        if rec.status == "failed" and rec.error is not None:
            raise QwenError.from_payload(rec.error)
        if rec.status != "succeeded":
            raise Conflict(f"task is {rec.status}; poll {poll}", code="task_not_finished")
        raw = await self.store.get(_result_key(task_id))
        if raw is None:
            raise NotFound(f"task {task_id!r}'s result has expired", param="task_id", code="task_not_found")
        return StoredResponse.model_validate_json(raw).response()

    async def cancel(self, task_id: str, kind: str | None = None) -> TaskRecord:
        """DELETE: a running task is cancelled (status cancelled; its owner stops it); a finished one is
        forgotten with its result (a later GET is a 404)."""
        rec = await self.get(task_id, kind)
        if rec.finished:
            await self.store.delete(_result_key(task_id))
            await self.store.delete(_record_key(task_id))
            return rec
        rec.cancel, rec.status, rec.finished_at = True, "cancelled", time.time()
        await self._save(rec)
        task = self._local.get(task_id)
        if task is not None:
            task.cancel()
        return rec


def add_task_routes(router, *, path: str, kind: str, parse, run, render, openapi_extra=None) -> tuple[str, ...]:
    """The task form of a route: POST {path}/tasks (202 + Location), GET {path}/tasks/{id} (status),
    GET {path}/tasks/{id}/result (the same response the plain route gives; 409 while running).

    parse is the plain route's FastAPI dependency giving its ctx (the same body, validated before the task is
    accepted); run(gw, ctx) -> result does the work; render(ctx, result) -> Response. Returns the route
    labels for metrics."""
    @router.post(f"{path}/tasks", status_code=202, openapi_extra=openapi_extra,
                 summary=f"Submit a {kind} task; it runs even if the client disconnects")
    async def submit(ctx=Depends(parse), gw=Depends(gateway)) -> JSONResponse:
        async def work() -> Response:
            return render(ctx, await run(gw, ctx))

        task = await gw.tasks.submit(kind, work)
        base = f"{path}/tasks/{task.task_id}"
        body = {"task_id": task.task_id, "status": task.status, "status_url": base, "result_url": f"{base}/result"}
        return JSONResponse(body, status_code=202, headers={"Location": base})

    @router.get(f"{path}/tasks/{{task_id}}", summary=f"Status of a {kind} task")
    async def status(task_id: str, gw=Depends(gateway)) -> JSONResponse:
        return JSONResponse((await gw.tasks.get(task_id, kind)).describe())

    @router.get(f"{path}/tasks/{{task_id}}/result", summary=f"Result of a {kind} task",
                responses={409: error_doc(409, "the task has not finished yet; poll its status")})
    async def result(task_id: str, gw=Depends(gateway)):
        return await gw.tasks.result(task_id, kind, poll=f"{path}/tasks/{task_id}")

    @router.delete(f"{path}/tasks/{{task_id}}", summary=f"Cancel a running {kind} task, or forget a finished one")
    async def delete(task_id: str, gw=Depends(gateway)) -> JSONResponse:
        return JSONResponse((await gw.tasks.cancel(task_id, kind)).describe())

    return (f"{path}/tasks", f"{path}/tasks/*")

"""Long work as a task: submit -> id, then status and result, independent of the client's connection.

A task runs as an asyncio task in the gateway process (it awaits the model service like any request, so
admission, batching and timeouts apply). Finished results are kept for `ttl` seconds; at most
`max_tasks` are held, and submitting past that is a 429. State lives in memory: a gateway restart loses
it (documented; a shared store is the next step for multi-replica gateways).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from fastapi import Depends
from fastapi.responses import JSONResponse

from services.gateway.deps import gateway

from services.runtime.core.errors import Conflict, NotFound, QwenError, TooManyRequests
from services.runtime.edge.http import error_doc
from services.runtime.core.logging import get_logger

log = get_logger("tasks")


@dataclass
class Task:
    id: str
    kind: str
    status: str = "pending"  # pending | running | succeeded | failed
    created_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    result: Any = None
    error: QwenError | None = None
    _task: asyncio.Task | None = None

    def describe(self) -> dict:
        out = {
            "task_id": self.id,
            "kind": self.kind,
            "status": self.status,
            "created_at": self.created_at,
            "finished_at": self.finished_at,
        }
        if self.error is not None:
            out["error"] = self.error.envelope()["error"]
        return out


class TaskStore:
    def __init__(self, *, ttl: float = 3600.0, max_tasks: int = 64):
        self.ttl = ttl
        self.max_tasks = max_tasks
        self._tasks: dict[str, Task] = {}

    def _expire(self) -> None:
        now = time.time()
        for tid in [t.id for t in self._tasks.values() if t.finished_at and now - t.finished_at > self.ttl]:
            del self._tasks[tid]

    def submit(self, kind: str, work: Callable[[], Awaitable[Any]]) -> Task:
        self._expire()
        if len(self._tasks) >= self.max_tasks:
            raise TooManyRequests(f"too many tasks held ({self.max_tasks}); fetch or wait for results",
                                  code="too_many_tasks", retry_after=30)
        task = Task(id=uuid.uuid4().hex, kind=kind)

        async def runner():
            task.status = "running"
            try:
                task.result = await work()
                task.status = "succeeded"
            except QwenError as exc:
                task.error, task.status = exc, "failed"
            except Exception as exc:  # noqa: BLE001
                log.error("task failed", extra={"task_id": task.id}, exc_info=True)
                task.error, task.status = QwenError(f"task failed: {type(exc).__name__}"), "failed"
            finally:
                task.finished_at = time.time()

        # Not tied to the submitting request: a client that disconnects does not cancel it.
        task._task = asyncio.get_running_loop().create_task(runner(), name=f"task-{task.id}")
        self._tasks[task.id] = task
        return task

    def get(self, task_id: str) -> Task:
        self._expire()
        task = self._tasks.get(task_id)
        if task is None:
            raise NotFound(f"task {task_id!r} not found (unknown or expired)", param="task_id",
                           code="task_not_found")
        return task


def add_task_routes(router, *, path: str, kind: str, parse, run, render, openapi_extra=None) -> tuple[str, ...]:
    """The task form of a route: POST {path}/tasks (202 + Location), GET {path}/tasks/{id} (status),
    GET {path}/tasks/{id}/result (the same response the plain route gives; 409 while running).

    parse is the plain route's FastAPI dependency giving its ctx (the same body, validated before the task is
    accepted); run(gw, ctx) -> result does the work; render(ctx, result) -> Response. Returns the route
    labels for metrics."""
    @router.post(f"{path}/tasks", status_code=202, openapi_extra=openapi_extra,
                 summary=f"Submit a {kind} task; it runs even if the client disconnects")
    async def submit(ctx=Depends(parse), gw=Depends(gateway)) -> JSONResponse:
        async def work():
            return ctx, await run(gw, ctx)

        task = gw.tasks.submit(kind, work)
        base = f"{path}/tasks/{task.id}"
        body = {"task_id": task.id, "status": task.status, "status_url": base, "result_url": f"{base}/result"}
        return JSONResponse(body, status_code=202, headers={"Location": base})

    @router.get(f"{path}/tasks/{{task_id}}", summary=f"Status of a {kind} task")
    async def status(task_id: str, gw=Depends(gateway)) -> JSONResponse:
        return JSONResponse(gw.tasks.get(task_id).describe())

    @router.get(f"{path}/tasks/{{task_id}}/result", summary=f"Result of a {kind} task",
                responses={409: error_doc(409, "the task has not finished yet; poll its status")})
    async def result(task_id: str, gw=Depends(gateway)):
        task = gw.tasks.get(task_id)
        if task.status == "failed" and task.error is not None:
            raise task.error
        if task.status != "succeeded":
            raise Conflict(f"task is {task.status}; poll {path}/tasks/{task_id}", code="task_not_finished")
        ctx, out = task.result
        return render(ctx, out)

    return (f"{path}/tasks", f"{path}/tasks/*")

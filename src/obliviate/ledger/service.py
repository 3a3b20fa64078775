"""The REST service (README "Deletion service"): FastAPI over the ledger, with bearer-token auth, a request size
limit, strict validation and idempotency keys. A request is committed to the ledger before ``202`` is sent, so
an accepted request survives any crash after that.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, StrictInt, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from obliviate.errors import ObliviateError
from obliviate.ledger.deployment import NAME_PATTERN, ModelManager
from obliviate.ledger.store import ConflictError, Ledger, NotFound, STATUSES
from obliviate.requests import ids_sha256, resolve

MAX_BODY_BYTES = 1 << 20  # 1 MiB: room for ~100,000 ids
MAX_IDS = 100_000
KEY_PATTERN = r"^[A-Za-z0-9_.:\-]{1,128}$"


class DeletionIn(BaseModel):
    """A deletion request: ``ids`` (training example ids) or a forget ``spec``, exactly one of them."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"ids": [4, 8, 15], "subject": "customer-4711", "idempotency_key": "ticket-123"}]})
    ids: list[Annotated[StrictInt, Field(ge=0, le=2**31 - 1)]] | None = Field(
        None, min_length=1, max_length=MAX_IDS, description="training example ids to delete")
    spec: str | None = Field(None, min_length=1, max_length=200,
                             description="a forget spec (class:3, random:50, target<=30, ids:4,8)")
    subject: str | None = Field(None, min_length=1, max_length=256,
                                description="whose data this is; the ledger keeps only its sha256")
    idempotency_key: str | None = Field(None, pattern=KEY_PATTERN,
                                        description="the same key returns the same request")
    model: str | None = Field(None, pattern=NAME_PATTERN, description="deployment name (default: the served one)")

    @model_validator(mode="after")
    def _one_target(self):
        if (self.ids is None) == (self.spec is None):
            raise ValueError("give exactly one of 'ids' (a list of example ids) or 'spec' (a forget spec)")
        return self


class DeletionOut(BaseModel):
    id: str
    status: Literal["queued", "running", "applied", "verified", "failed"]
    deployment: str
    spec: str | None
    n_ids: int
    ids_sha256: str
    subject_sha256: str | None
    idempotency_key: str | None
    method: str | None
    guarantee: str | None
    batch_id: str | None
    version_before: str | None
    version_after: str | None
    report_sha256: str | None
    attempts: int
    error: str | None
    created_at: str
    updated_at: str
    finished_at: str | None


class DeletionPage(BaseModel):
    items: list[DeletionOut]
    next_cursor: int | None = Field(None, description="pass as ?cursor= for the next page; null on the last")


class VersionOut(BaseModel):
    id: str
    deployment: str
    sha256: str
    parent: str | None
    method: str
    guarantee: str
    status: str
    n_deleted: int
    batch_id: str | None
    created_at: str


class VersionPage(BaseModel):
    items: list[VersionOut]
    next_cursor: int | None


class Problem(BaseModel):
    detail: str


class ValidationProblem(BaseModel):
    detail: str = Field(description="the first problem, in one line")
    errors: list[dict[str, Any]] = Field(default_factory=list, description="every problem, as pydantic reports it")


def _public(r: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in r.items() if k not in ("report_path", "seq")}


def _public_version(v: dict[str, Any]) -> dict[str, Any]:
    return {k: v[k] for k in VersionOut.model_fields}


class BodyLimit:
    """ASGI middleware: 413 for a body over ``limit`` bytes, from Content-Length or while streaming (a chunked
    upload has none). The body is read here, up to the limit, and handed on whole, so the 413 never depends on how
    the route reads it (FastAPI turns an exception raised while it reads the body into a 400)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    too_big = int(value) > self.limit
                except ValueError:
                    return await _plain(send, 400, "bad Content-Length header")
                if too_big:
                    return await _plain(send, 413, f"request body over {self.limit} bytes")
        chunks: list[bytes] = []
        seen = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away before its body ended
                return None
            body = message.get("body", b"")
            seen += len(body)
            if seen > self.limit:
                return await _plain(send, 413, f"request body over {self.limit} bytes")
            chunks.append(body)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


async def _plain(send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _one_line(errors: list[dict[str, Any]]) -> str:
    first = errors[0]
    if first.get("type") == "json_invalid":
        return f"malformed JSON: {first.get('ctx', {}).get('error', first.get('msg'))}"
    loc = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
    msg = first.get("msg", "invalid")
    if first.get("type") == "extra_forbidden":
        msg = f"unknown field (allowed: {', '.join(DeletionIn.model_fields)})"
    elif first.get("type") == "model_attributes_type" and tuple(first.get("loc", ())) == ("body",):
        msg = "expected a JSON object, sent with Content-Type: application/json"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{loc}: {msg}{more}"


def create_app(ledger: Ledger, manager: ModelManager, worker=None, token: str | None = None,
               max_body: int = MAX_BODY_BYTES) -> FastAPI:
    """The service over ``ledger`` and ``manager``'s deployment. ``token=None`` disables auth (``--insecure-dev``
    only); ``worker`` (optional) is woken when a request arrives."""
    deployment = manager.config.name
    app = FastAPI(title="obliviate deletion service", version="1",
                  description="Deletion requests, their ledger, and the served model's versions. Every route but "
                              "/healthz needs `Authorization: Bearer <token>`.")
    app.add_middleware(BodyLimit, limit=max_body)
    bearer = HTTPBearer(auto_error=False)
    # every /v1 route: 401 without the token, 422 (one-line ``detail`` plus ``errors``) for invalid parameters
    auth_responses = {401: {"model": Problem, "description": "missing or wrong bearer token"},
                      422: {"model": ValidationProblem, "description": "invalid parameters or body"}}

    def require_token(creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if token is None:
            return
        if creds is None or creds.scheme.lower() != "bearer":
            raise HTTPException(401, "missing bearer token (Authorization: Bearer <token>)",
                                headers={"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(creds.credentials.encode(), token.encode()):
            raise HTTPException(401, "wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError):
        errors = exc.errors()
        # only where and what: echoing ``input`` back would return up to the whole body, lone surrogates included
        brief = [{"loc": [str(x) for x in e.get("loc", ())], "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
                 for e in errors]
        return JSONResponse(status_code=422, content={"detail": _one_line(errors).encode("utf-8", "replace").decode(),
                                                      "errors": brief})

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        # FastAPI answers 400 "There was an error parsing the body" when json.loads fails on something other than
        # a JSONDecodeError: bytes that are not UTF-8/16/32 text, or nesting deeper than the parser's recursion
        if exc.status_code == 400 and isinstance(exc.__cause__, (UnicodeError, RecursionError)):
            why = "the body is not UTF-8 text" if isinstance(exc.__cause__, UnicodeError) else "nested too deeply"
            return JSONResponse(status_code=422, content={"detail": f"malformed JSON: {why}", "errors": []})
        return await http_exception_handler(request, exc)

    def _resolve(body: DeletionIn) -> tuple[list[int], str | None]:
        if body.model is not None and body.model != deployment:
            raise HTTPException(404, f"no model {body.model!r} (this service serves {deployment!r})")
        task = manager.task
        if body.spec is not None:
            spec = body.spec.strip()
            if spec.startswith("ids@"):
                raise HTTPException(422, "spec: ids@FILE reads a server file; send the ids in 'ids' instead")
            try:
                request = resolve(spec, task, manager.config.seed)
            except ObliviateError as exc:
                raise HTTPException(422, f"spec: {exc}") from None
            if request.n > MAX_IDS:
                raise HTTPException(422, f"spec: selects {request.n} examples; at most {MAX_IDS} per request")
            # an ids: spec is the ids themselves, which the ledger must not keep: record it like an ids list
            return request.ids.tolist(), None if spec.startswith("ids:") else spec
        ids = np.unique(np.asarray(body.ids, dtype=np.int64))
        bad = ids[ids >= task.n_train]
        if bad.size:
            raise HTTPException(422, f"ids: id {int(bad[0])} out of range (training ids are 0..{task.n_train - 1})")
        if ids.size >= task.n_train:
            raise HTTPException(422, "ids: the request deletes the whole training set; nothing would remain")
        return ids.tolist(), None

    @app.get("/healthz", tags=["service"])
    def healthz() -> dict[str, Any]:
        """Liveness (no auth, so it says nothing about the requests): the ledger answers."""
        ledger.serving(deployment)
        return {"status": "ok"}

    @app.get("/v1/status", tags=["service"], dependencies=[Depends(require_token)], responses=auth_responses)
    def status() -> dict[str, Any]:
        """For operators: requests by status, the serving version, the worker's progress and last error."""
        served = ledger.serving(deployment)
        return {"deployment": deployment, "task": manager.config.task, "method": manager.config.method,
                "guarantee": manager.method.guarantee, "serving_version": served["id"] if served else None,
                "requests": ledger.counts(deployment),
                "worker": None if worker is None else {"running": worker.running, "batches": worker.processed_batches,
                                                       "last_error": worker.last_error}}

    @app.post("/v1/deletions", status_code=202, response_model=DeletionOut, tags=["deletions"],
              dependencies=[Depends(require_token)],
              responses={**auth_responses, 400: {"model": Problem, "description": "bad Content-Length header"},
                         404: {"model": Problem, "description": "no such model"},
                         409: {"model": Problem, "description": "idempotency key used for another body"},
                         413: {"model": Problem, "description": "body over the size limit"}})
    def create_deletion(body: DeletionIn, idempotency_key: Annotated[str | None, Header(
            pattern=KEY_PATTERN, description="alternative to the body's idempotency_key")] = None):
        """Queue a deletion. Answers ``202`` once the request is durably in the ledger; the same idempotency key
        with the same body answers the same request, with a different body ``409``."""
        key = body.idempotency_key or idempotency_key
        if body.idempotency_key and idempotency_key and body.idempotency_key != idempotency_key:
            raise HTTPException(422, "idempotency key given twice (header and body) with different values")
        ids, spec = _resolve(body)
        canonical = json.dumps({"ids": body.ids, "spec": body.spec, "subject": body.subject,
                                "model": body.model or deployment}, sort_keys=True)
        try:
            request, created = ledger.submit(deployment, ids, ids_sha256(np.asarray(ids)), spec, body.subject, key,
                                             hashlib.sha256(canonical.encode()).hexdigest())
        except ConflictError as exc:
            raise HTTPException(409, str(exc)) from None
        if created and worker is not None:
            worker.wake()
        headers = {} if created else {"Idempotent-Replayed": "true"}
        return JSONResponse(status_code=202, content=_public(request), headers=headers)

    @app.get("/v1/deletions", response_model=DeletionPage, tags=["deletions"], dependencies=[Depends(require_token)],
             responses=auth_responses)
    def list_deletions(limit: Annotated[int, Query(ge=1, le=500)] = 50,
                       cursor: Annotated[int, Query(ge=0, le=2**62)] = 0,
                       status: Annotated[Literal[STATUSES] | None, Query()] = None,  # type: ignore[valid-type]
                       subject: Annotated[str | None, Query(min_length=1, max_length=256)] = None):
        """Requests in arrival order, ``limit`` per page; ``next_cursor`` continues."""
        rows = ledger.requests(limit=limit + 1, after=cursor, status=status, subject=subject, deployment=deployment)
        more = len(rows) > limit
        rows = rows[:limit]
        return {"items": [_public(r) for r in rows], "next_cursor": rows[-1]["seq"] if more else None}

    def _get(rid: str) -> dict[str, Any]:
        if not re.fullmatch(r"del_[0-9a-f]{20}", rid):
            raise HTTPException(404, f"no deletion request {rid!r}")
        try:
            return ledger.request(rid, deployment)
        except NotFound as exc:
            raise HTTPException(404, str(exc)) from None

    @app.get("/v1/deletions/{request_id}", response_model=DeletionOut, tags=["deletions"],
             dependencies=[Depends(require_token)], responses={**auth_responses, 404: {"model": Problem}})
    def get_deletion(request_id: Annotated[str, PathParam(max_length=64)]):
        """Status: queued → running → applied → verified, or failed with ``error``."""
        return _public(_get(request_id))

    def _report_file(request_id: str, suffix: str) -> Path:
        r = _get(request_id)
        if r["report_path"] is None:
            raise HTTPException(404, f"request {request_id} has no report yet (status {r['status']})")
        path = Path(r["report_path"]).with_suffix(suffix)
        if not path.is_file():
            raise HTTPException(404, f"the report of {request_id} is not available as {suffix[1:]}")
        return path

    @app.get("/v1/deletions/{request_id}/report", tags=["deletions"], dependencies=[Depends(require_token)],
             responses={**auth_responses, 404: {"model": Problem}, 500: {"model": Problem}})
    def get_report(request_id: Annotated[str, PathParam(max_length=64)]):
        """The verification report (``obliviate.run/1`` plus a ``service`` block), checked against the sha256
        the ledger recorded."""
        path = _report_file(request_id, ".json")
        text = path.read_bytes()
        if hashlib.sha256(text).hexdigest() != _get(request_id)["report_sha256"]:
            raise HTTPException(500, "the stored report does not match the ledger's sha256")
        return JSONResponse(json.loads(text))

    def _json_errors(codes: dict[int, str]) -> dict[int | str, dict[str, Any]]:
        # an HTML route's error answers are JSON; FastAPI would document a ``model`` under text/html
        def schema(code: int) -> dict[str, str]:
            return {"$ref": f"#/components/schemas/{'ValidationProblem' if code == 422 else 'Problem'}"}

        return {code: {"description": text, "content": {"application/json": {"schema": schema(code)}}}
                for code, text in codes.items()}

    @app.get("/v1/deletions/{request_id}/report.html", response_class=HTMLResponse, tags=["deletions"],
             dependencies=[Depends(require_token)],
             responses=_json_errors({401: "missing or wrong bearer token", 404: "no such request or no report yet",
                                     422: "invalid parameters"}))
    def get_report_html(request_id: Annotated[str, PathParam(max_length=64)]):
        """The same report as HTML (the page `obliviate run --html` writes)."""
        return HTMLResponse(_report_file(request_id, ".html").read_text(encoding="utf-8"))

    @app.get("/v1/models/current", response_model=VersionOut, tags=["models"], dependencies=[Depends(require_token)],
             responses={**auth_responses, 404: {"model": Problem}})
    def current_model():
        """The serving version: id, sha256, parent, method, guarantee."""
        v = ledger.serving(deployment)
        if v is None:
            raise HTTPException(404, "no model is being served yet")
        return _public_version(v)

    @app.get("/v1/models", response_model=VersionPage, tags=["models"], dependencies=[Depends(require_token)],
             responses=auth_responses)
    def list_models(limit: Annotated[int, Query(ge=1, le=500)] = 50,
                    cursor: Annotated[int | None, Query(ge=1, le=2**62)] = None):
        """Every version, newest first (lineage via ``parent``)."""
        rows = ledger.versions(deployment, limit=limit + 1, before=cursor)
        more = len(rows) > limit
        rows = rows[:limit]
        return {"items": [_public_version(v) for v in rows], "next_cursor": rows[-1]["seq"] if more else None}

    @app.get("/v1/models/{version_id}", response_model=VersionOut, tags=["models"],
             dependencies=[Depends(require_token)], responses={**auth_responses, 404: {"model": Problem}})
    def get_model(version_id: Annotated[str, PathParam(max_length=64)]):
        if not re.fullmatch(NAME_PATTERN, version_id):
            raise HTTPException(404, f"no model version {version_id!r}")
        v = ledger.version(version_id)
        if v is None or v["deployment"] != deployment:
            raise HTTPException(404, f"no model version {version_id!r}")
        return _public_version(v)

    @app.get("/v1/ledger/verify", tags=["ledger"], dependencies=[Depends(require_token)], responses=auth_responses)
    def verify_ledger() -> dict[str, Any]:
        """Recompute the event log's hash chain and check every row against it."""
        return ledger.verify()

    @app.get("/v1/ledger/events", tags=["ledger"], dependencies=[Depends(require_token)], responses=auth_responses)
    def ledger_events(after: Annotated[int, Query(ge=0, le=2**62)] = 0,
                      limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> dict[str, Any]:
        """The hash-chained event log, ``limit`` entries after ``after``."""
        items = ledger.events(after=after, limit=limit)
        return {"items": items, "next_cursor": items[-1]["seq"] if len(items) == limit else None}

    return app

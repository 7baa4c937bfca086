"""HTTP API of the recommendation service: request/response schemas and the FastAPI app (OpenAPI at /docs).

Every bad input is a 4xx with a message that names the problem: schema violations are FastAPI's 422, unknown
ids 404, duplicates 409, bodies over the size limit 413; writes without a bearer token 401, with a wrong one 403
(``lmrec.serving.auth``). A member replica that died under a request (or a hot
swap in progress) is a 503 with ``Retry-After``: clients retry it (docs/reliability.md). The same ``build_api`` serves the Ray Serve ingress
and the bare single-process app of the benchmark.
"""

from __future__ import annotations

import json
import math
import uuid
from typing import Annotated, Literal, Union

from fastapi import Depends, FastAPI, HTTPException
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StringConstraints, model_validator

from lmrec.serving.auth import Tokens, require_read, require_write

MAX_K = 1000
MAX_IDS = 1000
MAX_RATINGS = 500
MAX_TEXT_CHARS = 2000
MAX_BATCH_USERS = 1000
MAX_FILTER_VALUES = 100

# Raw ids are the dataset's own: ints for MovieLens, strings for Amazon. JSON 5 and "5" name the same item.
RawId = Union[int, Annotated[str, StringConstraints(min_length=1, max_length=200)]]
Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_TEXT_CHARS)]


class ServingError(Exception):
    """An error with its HTTP status (4xx for the client's mistakes, 503 when the service cannot answer yet)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ItemFilter(_Request):
    field: Literal["text"] = Field(
        "text", description="The item field to test. The artifacts carry each item's text (title, genres, ... as "
                            "rendered for the encoder), so that is the one field for now.")
    contains_any: list[Annotated[str, StringConstraints(min_length=1, max_length=200)]] = Field(
        min_length=1, max_length=MAX_FILTER_VALUES,
        description="Keep an item when its field contains one of these strings (ignoring case), e.g. [\"Comedy\"].")


class RecommendRequest(_Request):
    user_id: RawId = Field(description="The user's raw id in the dataset.")
    k: StrictInt = Field(10, ge=1, le=MAX_K, description="How many items to return.")
    exclude_seen: bool = Field(True, description="Leave out items the user interacted with in training.")
    candidate_item_ids: list[RawId] | None = Field(
        None, min_length=1, max_length=MAX_IDS, description="Rank only these items (raw ids).")
    explain: bool = Field(False, description="Add the user's liked items that most support each recommendation.")
    exclude_item_ids: list[RawId] | None = Field(
        None, max_length=MAX_IDS, description="Never return these items (raw ids; ids the service does not know are "
                                              "ignored).")
    filter: ItemFilter | None = Field(None, description="Return only items that pass this filter.")


class RecommendBatchRequest(_Request):
    requests: list[RecommendRequest] = Field(
        min_length=1, max_length=MAX_BATCH_USERS,
        description=f"One /recommend request per user (at most {MAX_BATCH_USERS}), each with its own k and options.")


class PredictRequest(_Request):
    user_id: RawId = Field(description="The user's raw id.")
    item_ids: list[RawId] = Field(min_length=1, max_length=MAX_IDS, description="Items to rate (raw ids).")


class SimilarItemsRequest(_Request):
    item_id: RawId | None = Field(None, description="Find items like this one ...")
    text: Text | None = Field(None, description="... or like this free text (exactly one of the two).")
    k: StrictInt = Field(10, ge=1, le=MAX_K, description="How many items to return.")

    @model_validator(mode="after")
    def _one_query(self) -> "SimilarItemsRequest":
        if (self.item_id is None) == (self.text is None):
            raise ValueError("give exactly one of item_id or text")
        return self


class RatingIn(_Request):
    item_id: RawId = Field(description="A rated item (raw id).")
    rating: float = Field(ge=0, le=10, description="The rating, on the dataset's scale.")


class ColdStartRequest(_Request):
    ratings: list[RatingIn] = Field(default_factory=list, max_length=MAX_RATINGS,
                                    description="The new user's ratings so far (may be empty with a profile text).")
    profile_text: Text | None = Field(None, description="Free text about the user's tastes.")
    k: StrictInt = Field(10, ge=1, le=MAX_K, description="How many items to return.")

    @model_validator(mode="after")
    def _has_signal(self) -> "ColdStartRequest":
        if not self.ratings and self.profile_text is None:
            raise ValueError("give at least one rating or a profile_text")
        ids = [str(r.item_id) for r in self.ratings]
        if len(set(ids)) != len(ids):
            raise ValueError("an item is rated twice")
        return self


class AddItemRequest(_Request):
    item_id: RawId = Field(description="The new item's raw id (must not exist yet).")
    text: Text = Field(description="The item's text (title, genres, description): its only signal.")


class Reason(BaseModel):
    item_id: RawId
    text: str | None = None
    rating: float | None = None
    similarity: float


class ScoredItem(BaseModel):
    item_id: RawId
    score: float
    text: str | None = None
    member_scores: dict[str, float | None] = Field(default_factory=dict)
    because_you_liked: list[Reason] | None = None


class RecommendResponse(BaseModel):
    user_id: RawId | None = None
    items: list[ScoredItem]
    versions: dict[str, str] = Field(description="sha256 (first 12 hex) of each member's artifact that answered.")
    recommendation_id: str = Field(description="A fresh uuid of this answer (log it with clicks to join them).")


class EntryError(BaseModel):
    status: int
    detail: str


class BatchEntry(RecommendResponse):
    error: EntryError | None = Field(None, description="Why this user got no items (e.g. 404 unknown user).")


class RecommendBatchResponse(BaseModel):
    results: list[BatchEntry] = Field(description="One entry per request, in order.")
    recommendation_id: str = Field(description="A fresh uuid of the whole batch.")


class Prediction(BaseModel):
    item_id: RawId
    rating: float
    member_ratings: dict[str, float | None]


class PredictResponse(BaseModel):
    user_id: RawId
    predictions: list[Prediction]
    versions: dict[str, str]


class AddItemResponse(BaseModel):
    item_id: RawId
    catalog_version: int
    recommendable: bool = True


class _BodyLimit:
    """ASGI middleware: refuse bodies over ``max_bytes`` with 413 before any JSON parsing (also when chunked)."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._reject(send)
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise _TooLarge(self.max_bytes)
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:  # raised outside a route's body parsing (inside it, FastAPI answers the 413 itself)
            await self._reject(send)

    async def _reject(self, send):
        body = json.dumps({"detail": _too_large_detail(self.max_bytes)}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def _too_large_detail(max_bytes: int) -> str:
    return f"request body larger than {max_bytes} bytes"


class _TooLarge(HTTPException):
    """Raised from the body stream; an HTTPException so that FastAPI's body parsing re-raises it (as 413) instead
    of folding it into a 400 "error parsing the body"."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(status_code=413, detail=_too_large_detail(max_bytes))


def _replica_unavailable(error: Exception) -> bool:
    """A Ray actor (a member replica) died or is unreachable; Ray is only imported if the app already uses it."""
    import sys

    exceptions = sys.modules.get("ray.exceptions")
    if exceptions is None:
        return False
    kinds = tuple(getattr(exceptions, n) for n in ("RayActorError", "ActorUnavailableError") if hasattr(exceptions, n))
    return isinstance(error, kinds)


def _with_id(answer: dict) -> dict:
    return {**answer, "recommendation_id": uuid.uuid4().hex}


def build_api(router, max_body_bytes: int = 65536, title: str = "lmrec recommendation service",
              tokens: Tokens | None = None) -> FastAPI:
    """The FastAPI app over an ``EnsembleRouter`` (``lmrec.serving.router``).

    ``tokens``: the bearer tokens (``lmrec.serving.auth``); None or no write token: writes are refused (403).
    Request counts go to ``router.metrics`` when it has one (``lmrec.serving.metrics``).
    """
    tokens = tokens or Tokens()
    reads = [Depends(require_read(tokens))] if tokens.read is not None else []
    app = FastAPI(title=title, description=__doc__)

    async def run(coro):
        try:
            return await coro
        except ServingError as e:
            headers = {"Retry-After": "1"} if e.status == 503 else None
            raise HTTPException(e.status, e.detail, headers=headers) from None
        except Exception as e:
            if not _replica_unavailable(e):
                raise
            # a member replica died or restarts under this request: retryable, unlike a bug (500)
            raise HTTPException(503, f"a model replica is unavailable ({type(e).__name__}); retry shortly",
                                headers={"Retry-After": "1"}) from None

    @app.post("/recommend", response_model=RecommendResponse, dependencies=reads,
              summary="Top-k items for a known user")
    async def recommend(req: RecommendRequest):
        return _with_id(await run(router.recommend(req)))

    @app.post("/recommend/batch", response_model=RecommendBatchResponse, dependencies=reads,
              summary=f"Top-k items for up to {MAX_BATCH_USERS} known users in one call")
    async def recommend_batch(req: RecommendBatchRequest):
        out = await run(router.recommend_batch(req))
        return _with_id({"results": [_with_id(r) for r in out["results"]]})

    @app.post("/predict", response_model=PredictResponse, dependencies=reads,
              summary="Predicted ratings of a user for given items")
    async def predict(req: PredictRequest):
        return await run(router.predict(req))

    @app.post("/similar-items", response_model=RecommendResponse, dependencies=reads,
              summary="Items like an item or a text")
    async def similar_items(req: SimilarItemsRequest):
        return _with_id(await run(router.similar_items(req)))

    @app.post("/cold-start/recommend", response_model=RecommendResponse, dependencies=reads,
              summary="Top-k items for an unseen user")
    async def cold_start(req: ColdStartRequest):
        return _with_id(await run(router.cold_start(req)))

    @app.post("/items", response_model=AddItemResponse, status_code=201, summary="Add an item from its text",
              dependencies=[Depends(require_write(tokens))],
              description="Needs the write token: `Authorization: Bearer <LMREC_WRITE_TOKEN>`.")
    async def add_item(req: AddItemRequest):
        return await run(router.add_item(req))

    # liveness stays open (load balancers and Serve's own checks call it without credentials)
    @app.get("/health", summary="Liveness: every member answers")
    async def health():
        return await run(router.health())

    @app.get("/version", dependencies=reads, summary="Artifact name, version and sha256 of every member")
    async def version():
        return await run(router.version())

    @app.get("/stats", dependencies=reads, summary="Encoder batching statistics and catalog size")
    async def stats():
        return await run(router.stats())

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request, exc: RequestValidationError):
        # FastAPI's own handler echoes each error's input; a JSON number like 1e999 parses to inf, which JSON
        # cannot encode (a 500). Non-finite floats are echoed as strings instead.
        return JSONResponse(status_code=422, content={"detail": _finite(jsonable_encoder(exc.errors()))})

    app.add_middleware(_BodyLimit, max_bytes=max_body_bytes)
    if getattr(router, "metrics", None) is not None:
        app.add_middleware(_CountRequests, metrics=router.metrics, paths={r.path for r in app.routes})
    return app


class _CountRequests:
    """ASGI middleware: one ``metrics.request(endpoint, status)`` per answered request (outermost, so 413s and
    401s count too). Unknown paths count as one endpoint: a scanner must not create a label per URL."""

    def __init__(self, app, metrics, paths: set[str]) -> None:
        self.app, self.metrics, self.paths = app, metrics, paths

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        endpoint = f"{scope['method']} {scope['path']}" if scope["path"] in self.paths else "other"
        status = {"code": 500}

        async def record(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record)
        finally:
            self.metrics.request(endpoint, status["code"])


def _finite(value):
    """``value`` with every non-finite float replaced by its string ("inf", "nan")."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value

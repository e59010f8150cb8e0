"""GET /image/{id}: the indexed image of an id, as PNG (never a path: ids only)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from clipkit.serve.routes import EngineDep

router = APIRouter()


@router.get(
    "/image/{item_id}",
    summary="the indexed image of an id (PNG, at most 512 px a side)",
    responses={200: {"content": {"image/png": {}}}, 404: {"description": "unknown id or no image"}},
)
async def image(item_id: int, engine: EngineDep) -> Response:
    png = await run_in_threadpool(engine.catalog.png, item_id)
    return Response(png, media_type="image/png", headers={"Cache-Control": "public, max-age=3600"})

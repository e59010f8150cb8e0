"""POST /zero-shot: class probabilities of an uploaded image (or an indexed id) over the given class names."""

from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool

from clipkit.serve.bodies import ZeroShotBody, body_doc, one_source, read_body
from clipkit.serve.routes import EngineDep

router = APIRouter()


@router.post(
    "/zero-shot",
    summary="class probabilities of an uploaded image (or an indexed id)",
    openapi_extra=body_doc(ZeroShotBody, "the image to classify"),
)
async def zero_shot(request: Request, engine: EngineDep):
    with engine.serving():  # counted while it runs: a batch waits only for queries in flight
        start = time.perf_counter()
        body, upload = await read_body(request, ZeroShotBody)
        kind, source = one_source(body, upload, ("id",))
        if kind == "image":
            image = await run_in_threadpool(engine.read_image, source)
            vector = await asyncio.wrap_future(engine.image_encoder.submit(image))
        else:
            vector = await run_in_threadpool(engine.item_vector, source)
        ranked = await run_in_threadpool(engine.zero_shot, vector, body.classes, body.templates)
        took_ms = round((time.perf_counter() - start) * 1000, 2)
        return {"classes": ranked, "templates": body.templates, "took_ms": took_ms}

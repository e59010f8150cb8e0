"""POST /zero-shot: class probabilities of an uploaded image (or an indexed id) over the given class names."""

from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool

from clipkit.serve.bodies import ZeroShotBody, body_doc, one_source, read_body
from clipkit.serve.routes import QueryEngineDep

router = APIRouter()


@router.post("/zero-shot", summary="class probabilities of an uploaded image (or an indexed id)",
             openapi_extra=body_doc(ZeroShotBody, "the image to classify"))
async def zero_shot(request: Request, engine: QueryEngineDep):
    start = time.perf_counter()
    body, upload = await read_body(request, ZeroShotBody)
    one_source(body, upload, ("id",))
    if upload is not None:
        image = await run_in_threadpool(engine.read_image, upload)
        vector = await asyncio.wrap_future(engine.image_encoder.submit(image))
    else:
        vector = await run_in_threadpool(engine.item_vector, body.id)
    ranked = await run_in_threadpool(engine.zero_shot, vector, body.classes, body.templates)
    return {"classes": ranked, "templates": body.templates, "took_ms": round((time.perf_counter() - start) * 1000, 2)}

"""POST /generate: images from the unCLIP pipeline, from a text, an expression, an indexed id or an upload.

    {"text": ..., "num_images": 4, "steps": 25, "sampler": "ddim", "guidance": 3.0, "negative_prompt": ..., "seed": 0}

Jobs run in a bounded pool (serve/batching.py): a full queue answers 503 with Retry-After at once.
"""

from __future__ import annotations

import asyncio
import base64
import io
import time

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool

from clipkit.serve.bodies import GenerateBody, body_doc, one_source, read_body
from clipkit.serve.routes import EngineDep

router = APIRouter()


def png_data_url(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


@router.post(
    "/generate",
    summary="images from the unCLIP pipeline (text, expression, id or image)",
    openapi_extra=body_doc(GenerateBody, "an image to make variations of"),
)
async def generate(request: Request, engine: EngineDep):
    start = time.perf_counter()
    body, upload = await read_body(request, GenerateBody)
    engine.check_generation(body.num_images, body.steps, body.sampler, body.guidance)
    kind, source = one_source(body, upload, ("text", "expression", "id"))
    options = dict(
        num_images=body.num_images, steps=body.steps, sampler=body.sampler, guidance=body.guidance, seed=body.seed
    )
    if body.negative_prompt is not None:
        options["negative_prompt"] = engine.check_text(body.negative_prompt, "negative_prompt")
    if kind == "text":
        options["text"] = engine.check_text(source)
    else:
        image = await run_in_threadpool(engine.read_image, upload) if upload is not None else None
        options["vector"] = await run_in_threadpool(engine.generation_vector, body.expression, body.id, image)
    assert engine.generator is not None  # check_generation refused a server without one
    images = await asyncio.wrap_future(engine.generator.submit(engine.generate, **options))
    encoded = await run_in_threadpool(lambda: [png_data_url(im) for im in images])
    return {"source": kind, "images": encoded, "seconds": round(time.perf_counter() - start, 3)}

"""POST /search: the nearest items to a text, an uploaded image, an indexed id or an arithmetic expression.

    {"text": "a red circle", "k": 20, "filters": {"shape": "circle"}}
    {"id": 42}  (more like this: the item itself left out)
    {"expression": "text:\\"a circle\\" + 0.8 * text:\\"a hat\\""}   (answers also with the nearest words)
    multipart/form-data with an `image` file (k, filters, expression as fields)
"""

from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool

from clipkit.serve.bodies import SearchBody, body_doc, one_source, read_body
from clipkit.serve.engine import Query
from clipkit.serve.routes import QueryEngineDep

router = APIRouter()


@router.post("/search", summary="nearest items to a text, an image, an indexed id or an expression",
             openapi_extra=body_doc(SearchBody, "an image to search with (or img:\"upload\" in expression)"))
async def search(request: Request, engine: QueryEngineDep):
    start = time.perf_counter()
    body, upload = await read_body(request, SearchBody)
    kind = one_source(body, upload, ("text", "id", "expression"))
    k = engine.check_k(body.k)
    mask = await run_in_threadpool(engine.filter_mask, body.filters) if body.filters else None
    query, words = Query(k, mask=mask), None
    if kind == "text":
        query.text = engine.check_text(body.text)                 # encoded inside the search batch
    elif kind == "image":
        query.image = await run_in_threadpool(engine.read_image, upload)   # encoded inside the search batch
    elif kind == "id":
        query.exclude = body.id
        query.vector = await run_in_threadpool(engine.item_vector, body.id)
    else:
        image = await run_in_threadpool(engine.read_image, upload) if upload is not None else None
        query.vector = await run_in_threadpool(engine.expression_vector, body.expression, None, image)
        words = await run_in_threadpool(engine.nearest_words, query.vector)
    scores, ids = await asyncio.wrap_future(engine.searcher.submit(query))
    results = engine.hits(scores, ids)
    return {"query": kind, "k": k, "count": len(results), "words": words,
            "took_ms": round((time.perf_counter() - start) * 1000, 2), "results": results}

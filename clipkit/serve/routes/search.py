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
from clipkit.serve.routes import EngineDep

router = APIRouter()


@router.post(
    "/search",
    summary="nearest items to a text, an image, an indexed id or an expression",
    openapi_extra=body_doc(SearchBody, 'an image to search with (or img:"upload" in expression)'),
)
async def search(request: Request, engine: EngineDep):
    with engine.serving():  # counted while it runs: a batch waits only for queries in flight
        start = time.perf_counter()
        body, upload = await read_body(request, SearchBody)
        kind, source = one_source(body, upload, ("text", "id", "expression"))
        k = engine.check_k(body.k)
        mask = await run_in_threadpool(engine.catalog.mask, body.filters) if body.filters else None
        query, words = Query(k, mask=mask), None
        if kind == "text":
            query.text = engine.check_text(source)  # encoded inside the search batch
        elif kind == "image":
            query.image = await run_in_threadpool(engine.read_image, source)  # encoded inside the search batch
        elif kind == "id":
            query.exclude = source
            query.vector = await run_in_threadpool(engine.item_vector, source)
        else:
            image = await run_in_threadpool(engine.read_image, upload) if upload is not None else None
            query.vector = vector = await run_in_threadpool(engine.expression_vector, source, None, image)
            words = await run_in_threadpool(engine.nearest_words, vector)
        scores, ids = await asyncio.wrap_future(engine.searcher.submit(query))
        results = engine.catalog.hits(scores, ids)
        return {
            "query": kind,
            "k": k,
            "count": len(results),
            "words": words,
            "took_ms": round((time.perf_counter() - start) * 1000, 2),
            "results": results,
        }

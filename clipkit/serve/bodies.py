"""Request bodies: the pydantic models of the POST endpoints and one reader for JSON or multipart forms.

    body, upload = await read_body(request, SearchBody)     # (validated model, image bytes or None)
    kind = one_source(body, upload, ("text", "id", "expression"))

JSON bodies are validated strictly (a string where a number belongs is refused); form
fields are strings by nature and converted. Every refusal is a `ClientError` naming
the problem: 400 (not JSON, too deeply nested, two sources), 415 (another
Content-Type), 422 (a field of the wrong type or an unknown field, with the known ones).
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, ValidationError

from clipkit.serve.errors import ClientError, Unsupported, describe

Scalar = StrictStr | StrictInt | StrictFloat | StrictBool


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SearchBody(_Body):
    text: str | None = Field(None, description="text query", examples=["a red circle wearing a hat"])
    id: int | None = Field(None, description="id of an indexed item: more like this (the item itself left out)")
    expression: str | None = Field(
        None,
        description='arithmetic: text:"...", img:"42" (an indexed id), '
        'img:"upload" (the uploaded image), numbers, + - *, mean(), normalize()',
    )
    k: int = Field(20, ge=1, description="number of results (capped at the index size and --max-k)")
    filters: dict[str, Scalar | list[Scalar]] | None = Field(
        None, description="metadata filters {column: value or [values]}; GET /info lists the columns"
    )


class ZeroShotBody(_Body):
    classes: list[str] = Field(description="class names (a form field takes them comma-separated)")
    templates: str = Field("simple", description="prompt templates: simple | openai | none")
    id: int | None = Field(None, description="classify this indexed item instead of an uploaded image")


class GenerateBody(_Body):
    text: str | None = Field(None, description="prompt: text -> prior -> decoder")
    expression: str | None = Field(None, description="an arithmetic expression, decoded as an image embedding")
    id: int | None = Field(None, description="variations of an indexed item")
    negative_prompt: str | None = Field(None, description="pushed away from (text prompts only)")
    num_images: int = Field(4, description="images to make (1..--max-num-images)")
    steps: int = Field(25, description="decoder sampling steps")
    sampler: str = Field("ddim", description="ddim | ddpm | flow")
    guidance: float = Field(3.0, description="decoder classifier-free guidance scale")
    seed: int = Field(0, description="random seed (same seed, same images)")


def body_doc(cls: type[BaseModel], upload: str | None) -> dict:
    """OpenAPI text for an endpoint reading JSON or (with `upload`) a multipart form."""
    content = {"application/json": {"schema": cls.model_json_schema()}}
    if upload:
        fields = {name: {"type": "string", "description": f.description or ""} for name, f in cls.model_fields.items()}
        content["multipart/form-data"] = {
            "schema": {
                "type": "object",
                "properties": {"image": {"type": "string", "format": "binary", "description": upload}, **fields},
            }
        }
    return {"requestBody": {"required": True, "content": content}}


def _loads(text: str | bytes, what: str, example: str):
    try:
        return json.loads(text)
    except RecursionError:  # `[[[[...` thousands deep: the parser's stack, not a crash of ours
        raise ClientError(400, f"{what} is nested too deeply to read; send a flat JSON value") from None
    except ValueError as e:
        raise ClientError(400, f"{what} is not valid JSON ({e}); send e.g. {example}") from None


def _form_value(name: str, value: str):
    """Form fields are strings: JSON for filters / lists, comma- or line-separated class names."""
    text = value.strip()
    if name == "filters":
        return _loads(text, "form field filters", '{"shape": "circle"}') if text else None
    if name == "classes":
        if text.startswith("["):
            return _loads(text, "form field classes", '["circle", "square"]')
        return [c.strip() for c in text.replace("\n", ",").split(",") if c.strip()]
    return value


Body = TypeVar("Body", bound=BaseModel)


async def read_body(request: Request, cls: type[Body]) -> tuple[Body, bytes | None]:
    """(validated body, uploaded image bytes or None) from a JSON body or a multipart form."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    upload = None
    if ctype == "multipart/form-data":
        form = await request.form(max_files=1, max_fields=32, max_part_size=256 * 1024)
        data: dict = {}
        for name, value in form.multi_items():
            if name == "image":
                if isinstance(value, str):
                    raise ClientError(422, "form field image must be a file upload, not text")
                upload = await value.read()
            elif name in data:
                raise ClientError(400, f"form field {name!r} is given twice")
            elif not isinstance(value, str):
                raise ClientError(422, f"form field {name!r} must be text, not a file (only `image` is a file)")
            else:
                data[name] = _form_value(name, value)
        strict = False
    elif ctype in ("application/json", ""):
        raw = await request.body()
        data = _loads(raw, "the request body", '{"text": "a red circle"}') if raw.strip() else {}
        if not isinstance(data, dict):
            raise ClientError(422, f"the request body must be a JSON object; got a JSON {type(data).__name__}")
        strict = True
    else:
        raise Unsupported(f"Content-Type {ctype!r} is not read here; send application/json or multipart/form-data")
    try:
        return cls.model_validate(data, strict=strict), upload
    except ValidationError as e:
        raise ClientError(422, describe(e.errors(), cls.model_fields)) from None
    except RecursionError:  # valid JSON, but too deep for the validator
        raise ClientError(400, "the request body is nested too deeply to read; send flat JSON values") from None


def one_source(body: BaseModel, upload: bytes | None, names: tuple[str, ...]) -> tuple[str, Any]:
    """(name, value) of the one of `names` (or "image", the upload's bytes) the request gives; exactly one, or a 400."""
    given = [n for n in names if getattr(body, n) is not None]
    if upload is not None and getattr(body, "expression", None) is None:
        given.append("image")
    if len(given) != 1:
        raise ClientError(
            400,
            f"give exactly one of {', '.join(names)} or an image upload; got {', '.join(given) if given else 'none'}",
        )
    return given[0], upload if given[0] == "image" else getattr(body, given[0])

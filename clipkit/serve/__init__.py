"""`clipkit serve`: a search-and-generate web app over an index (and an unCLIP pipeline).

    from clipkit.serve import Engine, ServeConfig, create_app, bind_socket, run_server
    engine = Engine(index, model, pipeline=None, config=ServeConfig(batching=True))
    run_server(create_app(engine), bind_socket("127.0.0.1", 8000))

A thin layer over the library: `engine` (the same index / encoder / arithmetic /
zero-shot / unCLIP calls the CLI makes, plus the checks a public endpoint needs),
`errors` (ClientError -> 4xx, anything else -> 500), `batching` (micro-batched
encoders and search, a bounded generation pool), `app` (the FastAPI app) over
`routes/` (one router each) and `bodies` (request models), `metrics` (Prometheus,
request log), the page in static/. Names load lazily: importing clipkit.serve does
not import FastAPI or torch.
"""

from importlib import import_module

_EXPORTS = {
    "Engine": "engine",
    "ServeConfig": "engine",
    "Query": "engine",
    "ClientError": "errors",
    "TooLarge": "errors",
    "UnknownId": "errors",
    "MicroBatcher": "batching",
    "BoundedPool": "batching",
    "Overloaded": "batching",
    "Metrics": "metrics",
    "create_app": "app",
    "bind_socket": "app",
    "run_server": "app",
    "make_server": "app",
}
__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(import_module(f"clipkit.serve.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'clipkit.serve' has no attribute {name!r}")

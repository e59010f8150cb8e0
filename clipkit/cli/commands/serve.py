"""`clipkit serve --index IDX [--model M] [--unclip PIPELINE] [--host 127.0.0.1] [--port 8000]`: the web app."""

from __future__ import annotations

import argparse
import logging

import clipkit
from clipkit.cli.types import finite_float, port_number

LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

DESCRIPTION = """\
Serve a search-and-generate web app over an index: open the printed address in a
browser. The page searches by text, by an uploaded image, by "more like this" on a
hit, and by embedding arithmetic; zero-shot classifies an upload; with --unclip it
generates images. The same things are a JSON API, documented at /docs (OpenAPI):
POST /search, /zero-shot, /generate; GET /image/{id}, /health, /info, /metrics.

The model is the one the index's manifest records unless --model is given (it must
be the same weights: the index refuses another). The server listens on 127.0.0.1,
this machine only, unless --host says otherwise.
"""

EPILOG = """\
examples:
  clipkit serve --index runs/demo/retrieval/index --unclip runs/demo/unclip/pipeline
  clipkit serve --index idx/ --model runs/demo/clip/model --port 0      # any free port
  curl -s localhost:8000/search -H 'content-type: application/json' -d '{"text": "a red star", "k": 5}'
  curl -s localhost:8000/search -F image=@photo.png -F k=10
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="web app + JSON API: search an index, zero-shot, generate with unCLIP",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--index", required=True, metavar="IDX", help="index folder from `clipkit index build`")
    p.add_argument(
        "--model",
        default=None,
        metavar="M",
        help="model directory or preset to encode queries with [the one the index's manifest records]",
    )
    p.add_argument(
        "--unclip",
        default=None,
        metavar="PIPELINE",
        help="unCLIP pipeline folder (from train-prior / train-decoder): enables POST /generate "
        "and the page's Generate panel [off]",
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on [127.0.0.1 = this machine only; 0.0.0.0 opens it to your network, "
        "which has no login: do that only on a network you trust]",
    )
    p.add_argument("--port", type=port_number, default=8000, help="TCP port [8000]; 0 picks a free one and prints it")
    p.add_argument("--mmap", action="store_true", help="memory-map the FAISS index instead of reading it into RAM")
    p.add_argument(
        "--no-verify",
        dest="verify",
        action="store_false",
        help="skip the sha256 check of the index files at start (sizes are still checked): for very "
        "large indexes, where hashing costs ~0.7 s per GB [verify]",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="threads inside each torch / FAISS operation [1: encoders, search and generation already "
        "run side by side, and on a busy machine extra threads per operation mostly spin]",
    )
    p.add_argument(
        "--log-level",
        default="warning",
        choices=LOG_LEVELS,
        help="log level of the server (clipkit.serve and uvicorn); info and debug log one line per "
        "request (method, path, status, ms) [warning]",
    )
    b = p.add_argument_group("throughput: concurrent queries share forward passes")
    b.add_argument(
        "--no-batching",
        dest="batching",
        action="store_false",
        help="encode and search each query on its own (the baseline of benchmarks/bench_serve.py)",
    )
    b.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        default="fp32",
        help="encoders' precision: bf16 autocast uses the CPU's bf16 matrix units / GPU tensor cores; "
        "vectors stay float32 [fp32]",
    )
    b.add_argument("--max-batch", type=int, default=64, help="most queries in one forward / FAISS call [64]")
    b.add_argument(
        "--batch-window-ms",
        type=finite_float,
        default=2.0,
        help="how long a query waits for others to join its batch, when other queries are in flight [2.0]",
    )
    b.add_argument(
        "--max-pending",
        type=int,
        default=1024,
        help="queries allowed to wait for the encoder; more get 503 + Retry-After [1024]",
    )
    b.add_argument("--gen-workers", type=int, default=1, help="generation jobs run at once [1]")
    b.add_argument(
        "--gen-queue",
        type=int,
        default=4,
        help="generation jobs allowed to wait; more get 503 + Retry-After at once [4]",
    )
    lim = p.add_argument_group("limits: requests over them get a 4xx that says which")
    lim.add_argument(
        "--max-k", type=int, default=1000, help="most results per search (also capped at the index size) [1000]"
    )
    lim.add_argument("--max-query-chars", type=int, default=1000, help="longest text query or expression [1000]")
    lim.add_argument("--max-upload-mb", type=finite_float, default=10.0, help="largest upload, 413 beyond [10]")
    lim.add_argument(
        "--max-image-mpixels",
        type=finite_float,
        default=16.8,
        help="largest decoded image in megapixels; refuses decompression bombs [16.8 = 4096x4096]",
    )
    lim.add_argument("--max-num-images", type=int, default=8, help="most images per /generate request [8]")
    lim.add_argument("--max-steps", type=int, default=250, help="most sampling steps per /generate request [250]")
    p.set_defaults(func=run)


def configure_logging(level: str) -> None:
    """One format for the server's lines; only clipkit.serve and uvicorn go below WARNING (not every library)."""
    logging.basicConfig(format=LOG_FORMAT, level=logging.WARNING)
    for name in ("clipkit.serve", "uvicorn"):
        logging.getLogger(name).setLevel(level.upper())


def run(args) -> int:
    # Lazy: the CLI imports a command's heavy dependencies (torch, FAISS, FastAPI) only when it runs.
    from clipkit.serve import Engine, ServeConfig, bind_socket, create_app, run_server

    if args.threads < 1:
        raise ValueError(f"--threads {args.threads}; expected >= 1")
    import faiss
    import torch

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    for flag in ("max_batch", "max_pending", "gen_workers", "max_k", "max_query_chars", "max_num_images", "max_steps"):
        if getattr(args, flag) < 1:
            raise ValueError(f"--{flag.replace('_', '-')} {getattr(args, flag)}; expected >= 1")
    config = ServeConfig(
        batching=args.batching,
        precision=args.precision,
        max_batch=args.max_batch,
        batch_window_ms=args.batch_window_ms,
        max_pending=args.max_pending,
        gen_workers=args.gen_workers,
        gen_queue=args.gen_queue,
        max_k=args.max_k,
        max_query_chars=args.max_query_chars,
        max_upload_bytes=int(args.max_upload_mb * 2**20),
        max_image_pixels=int(args.max_image_mpixels * 1e6),
        max_num_images=args.max_num_images,
        max_steps=args.max_steps,
    )
    configure_logging(args.log_level)
    sock = bind_socket(args.host, args.port)  # fail fast on a busy port, before loading models
    index = clipkit.EmbeddingIndex.load(args.index, mmap=args.mmap, verify=args.verify)
    missing = index.missing_images()
    if missing:
        print(f"warning: {missing}; /image/{{id}} answers 404 for them")
    model = index.model(args.model)
    pipeline = None
    if args.unclip:
        pipeline = clipkit.UnCLIP.load(args.unclip)
    engine = Engine(index, model, pipeline, config)
    engine.warmup()
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(
        f"clipkit serve: {len(index):,} items ({index.kind}), model {model.identity}"
        f"{', unCLIP ' + args.unclip if pipeline is not None else ''}; micro-batching "
        f"{'on' if config.batching else 'off'}"
    )
    if host not in ("127.0.0.1", "::1", "localhost"):
        print(f"warning: listening on {host}: anyone who can reach this machine can use the server (no login)")
    print(f"open http://{shown}:{port}/   (API docs: http://{shown}:{port}/docs; Ctrl-C stops)", flush=True)
    try:
        run_server(create_app(engine), sock, args.log_level)
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it shut down on
        pass
    finally:
        engine.close()
    print("clipkit serve: stopped")
    return 0

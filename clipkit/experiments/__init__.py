"""Experiments on the built-in shapes world and the 2-D spiral: the one home of everything that knows them.

    demo.py          `clipkit demo`: every stage of the loop on the shapes world, resumable, report.html
    demo_report.py   the demo's HTML report
    shapes_eval.py   shapes-world measures: per-attribute zero-shot accuracy, the hat vector
    unclip_eval.py   unCLIP on the shapes world: inversion, text -> image, arithmetic -> pixels
    spiral/          the 2-D spiral lab (diffusion you can see)
    configs/         the demo's training configs (package data; training/configs and
                     decoder/configs in a checkout link here)

The library core (model, data, losses, train, index, zeroshot, arithmetic,
diffusion, unclip, serve) never imports this package, the shapes world
(clipkit.data.shapes) or the CLI: tests/test_layout.py reads the imports.
"""

from pathlib import Path

CONFIGS = Path(__file__).with_name("configs")


def config_path(name: str) -> Path:
    """A packaged config by file name ("shapes-small.json") or stem ("shapes-small")."""
    path = CONFIGS / (name if name.endswith(".json") else f"{name}.json")
    if not path.is_file():
        choices = sorted(p.stem for p in CONFIGS.glob("*.json"))
        raise FileNotFoundError(f"no packaged config {name!r}; choose one of {choices}")
    return path

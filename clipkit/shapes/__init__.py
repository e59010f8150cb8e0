"""The built-in shapes world and everything that knows it: the one home of the demo and its measures.

    world.py         the shapes world: attributes, captions, renders, shards (`clipkit shapes`)
    demo.py          `clipkit demo`: every stage of the loop on the shapes world, resumable, report.html
    report.py        the demo's HTML report
    evaluate.py      shapes-world measures: per-attribute zero-shot accuracy, the hat vector
    unclip_eval.py   unCLIP on the shapes world: inversion, text -> image, arithmetic -> pixels
    judge.py         the independent judge (a classifier trained on the world's true attributes)
    benchmark.py     the shapes world exported as a clip_benchmark dataset
    recipes/         the shapes world's training recipes (package data; training/configs and
                     decoder/configs in a checkout link here). Architectures (--model) are in
                     clipkit/presets/architectures; the notes behind both in docs/notes-presets.md

The labs (spiral, generation lab, fine-tuning) live in clipkit.labs. The library core never
imports this package, the labs or the CLI: tests/test_layout.py reads the imports.
"""

from pathlib import Path

RECIPES = Path(__file__).with_name("recipes")


def config_path(name: str) -> Path:
    """A packaged training recipe by file name ("shapes-small.json") or stem ("shapes-small")."""
    path = RECIPES / (name if name.endswith(".json") else f"{name}.json")
    if not path.is_file():
        choices = sorted(p.stem for p in RECIPES.glob("*.json"))
        raise FileNotFoundError(f"no packaged recipe {name!r}; choose one of {choices}")
    return path

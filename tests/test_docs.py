"""The documentation a user reads: a short README whose figures come from result files, commands that parse,
no sentence tied to a moment of development, and a docs site that builds strictly and fetches nothing online.

The README's measurement convention (checked here): a README line that quotes a measurement cites the result
file it comes from as `benchmarks/results/NAME.json`, and every figure on that line is a number of that file
(to the precision quoted; a percentage may be a fraction in the file). A figure is a number with a unit
(`2.5×`, `11%`, `340 ms`, `12 GiB`, `364 samples/s`, ...) or a fraction such as `0.95`, outside code. Lines
without a citation quote no figures: measurements live on the docs' experiment and benchmark pages.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
HOOKS = DOCS / "hooks"
RESULTS = ROOT / "benchmarks" / "results"
DOC_SOURCES = [README, *sorted(DOCS.rglob("*.md"))]

# ----------------------------------------------------------------------------- moments of development

MOMENT_WORDS = re.compile(
    r"\b(this|last|previous|next|earlier|that) round('s)?\b|\btoday\b|\byesterday\b|\btomorrow\b"
    r"|\bthis session\b|\bthis sprint\b|\bfield[- ]notes\b|\bissues?\s*#?\d+"
    r"|\"[^\"\n]{1,40}\" issue\b|\bat the moment\b|\bfor now\b|\bcurrently\b",
    re.IGNORECASE,
)


def moment_words(text: str) -> list[str]:
    """Phrases that tie a text to a moment of its development (or to the issue tracker)."""
    return [m.group(0) for m in MOMENT_WORDS.finditer(text)]


def test_the_moment_detector_catches_what_it_is_for():
    bad = (
        'This round the index got faster. Today we fixed it; see issue 27, the "Pixels" issue and FIELD-NOTES. '
        "Last round's upsampler."
    )
    assert len(moment_words(bad)) == 6
    assert moment_words("The contenders alternate for --rounds rounds; the median over rounds; round by round.") == []


@pytest.mark.parametrize("path", DOC_SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_sentence_is_tied_to_a_moment_of_development(path):
    found = moment_words(path.read_text(encoding="utf-8"))
    assert not found, f"{path.relative_to(ROOT)} says {found}: the CHANGELOG carries what changed and when"


# ----------------------------------------------------------------------------- the README


def test_readme_is_at_most_200_lines():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; move detail into docs/"


CITATION = re.compile(r"benchmarks/results/([\w.-]+\.json)")
UNITS = (
    r"%|×|x\b|ms\b|µs\b|us\b|s\b|sec\b|seconds?\b|min\b|minutes?\b|h\b|hours?\b|[GT]FLOP|samples/s|req/s"
    r"|images?/s|img/s|QPS|GiB|MiB|KiB|GB|MB|KB|TB"
)
FIGURE = re.compile(rf"(?<![\w.])(\d[\d,]*(?:\.\d+)?)\s*(?:{UNITS})|(?<![\w.])(0\.\d+)(?![\d.])")


def prose_lines(markdown: str) -> list[tuple[int, str]]:
    """(line number, text) of the prose: fenced code, inline code, link targets and HTML comments removed."""
    out, fenced = [], False
    for number, line in enumerate(markdown.splitlines(), 1):
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
            continue
        if fenced:
            continue
        line = re.sub(r"`[^`]*`", "", line)
        line = re.sub(r"\]\([^)]*\)", "]", line)
        line = re.sub(r"<!--.*?-->", "", line)
        out.append((number, line))
    return out


def numbers_in(value) -> list[float]:
    """Every number of a JSON value, numbers written inside its strings (table cells) included."""
    if isinstance(value, bool):
        return []
    if isinstance(value, (int, float)):
        return [float(value)]
    if isinstance(value, str):
        return [float(n.replace(",", "")) for n in re.findall(r"-?\d[\d,]*(?:\.\d+)?", value)]
    if isinstance(value, dict):
        return [n for v in value.values() for n in numbers_in(v)]
    if isinstance(value, list):
        return [n for v in value for n in numbers_in(v)]
    return []


def figure_in(figure: str, numbers: list[float]) -> bool:
    """Does `figure` (as quoted: '2.50', '1,182') equal one of `numbers` to its precision (or as a percentage)?"""
    text = figure.replace(",", "")
    decimals = len(text.split(".")[1]) if "." in text else 0
    value, tolerance = float(text), 0.5 * 10**-decimals + 1e-9
    return any(abs(n - value) <= tolerance or abs(100 * n - value) <= tolerance for n in numbers)


def unbacked_figures(markdown: str, results_dir: Path) -> list[str]:
    """The README convention's violations: figures on lines that cite no result file, or not in the file cited."""
    problems = []
    for number, line in prose_lines(markdown):
        figures = [m.group(1) or m.group(2) for m in FIGURE.finditer(line)]
        if not figures:
            continue
        cited = CITATION.findall(line)
        if not cited:
            problems.append(f"line {number} quotes {figures} without citing benchmarks/results/NAME.json")
            continue
        numbers: list[float] = []
        for name in cited:
            path = results_dir / name
            if not path.is_file():
                problems.append(f"line {number} cites benchmarks/results/{name}, which does not exist")
                continue
            numbers += numbers_in(json.loads(path.read_text(encoding="utf-8")))
        problems += [
            f"line {number}: {f} is not in {', '.join(cited)}" for f in figures if numbers and not figure_in(f, numbers)
        ]
    return problems


def test_the_figure_check_ties_each_figure_to_its_result_file(tmp_path):
    (tmp_path / "train-bf16.json").write_text(
        json.dumps(
            {
                "command": "python benchmarks/bench_train.py",
                "results": {"ratio": {"median": 2.5012}, "util": 0.114, "rows": [["clipkit", "364 (350–370)"]]},
            }
        )
    )
    readme = "\n".join(
        [
            "clipkit trains 2.50× faster in bf16, at 11.4% of the peak (benchmarks/results/train-bf16.json).",  # ok
            "It reaches 364 samples/s there (benchmarks/results/train-bf16.json).",  # a cell
            "Two processes gave 1.91× (benchmarks/results/train-bf16.json).",  # not in it
            "Serving is 2.4× faster with batching.",  # no citation
            "Recall 0.95 (benchmarks/results/index.json).",  # no file
            "Python 3.10 on 127.0.0.1, a 2-core CPU, `--recall 0.99`, make demo in a few minutes.",  # no figures
            "```",
            "took 12 s",
            "```",  # code
        ]
    )
    problems = unbacked_figures(readme, tmp_path)
    assert [re.match(r"line \d+", p).group(0) for p in problems] == ["line 3", "line 4", "line 5"]
    assert "1.91" in problems[0] and "2.4" in problems[1] and "index.json" in problems[2]


def test_every_figure_the_readme_quotes_comes_from_a_result_file():
    problems = unbacked_figures(README.read_text(encoding="utf-8"), RESULTS)
    assert not problems, "README measurements must cite their result file:\n" + "\n".join(problems)


def test_readme_links_point_at_files_that_exist():
    text = README.read_text(encoding="utf-8")
    targets = [t.split("#")[0] for t in re.findall(r"\]\(([^)\s]+)\)", text) if "://" not in t]
    missing = [t for t in targets if t and not (ROOT / t).exists()]
    assert targets and not missing, f"README links to missing files: {missing}"


# ----------------------------------------------------------------------------- commands in the text parse


def shell_commands(markdown: str) -> list[str]:
    """Every command line of the fenced shell blocks (continuations joined)."""
    commands, block, fenced = [], None, False
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            block = [] if fenced and line.strip() in ("```bash", "```sh", "```console") else None
            continue
        if fenced and block is not None:
            if commands and commands[-1].endswith("\\"):
                commands[-1] = commands[-1][:-1] + " " + line.strip()
            else:
                commands.append(line.strip())
    return [c for c in commands if c and not c.startswith("#")]


def clipkit_argv(command: str) -> list[str] | None:
    """The arguments after `clipkit` (also `-m clipkit`) in a shell command, or None if it runs no clipkit."""
    try:
        words = shlex.split(command, comments=True)
    except ValueError:
        return None
    for i, word in enumerate(words):
        if word == "clipkit" and (i == 0 or words[i - 1] == "-m"):
            return words[i + 1 :]
    return None


DOCUMENTED_COMMANDS = [
    (path, c)
    for path in DOC_SOURCES
    for c in shell_commands(path.read_text(encoding="utf-8"))
    if clipkit_argv(c) is not None
]


def test_the_docs_show_clipkit_commands():
    assert sum(1 for p, _ in DOCUMENTED_COMMANDS if p == README) >= 10
    assert len(DOCUMENTED_COMMANDS) >= 60


@pytest.mark.parametrize(
    "path,command", DOCUMENTED_COMMANDS, ids=[f"{p.relative_to(ROOT)}:{c[:60]}" for p, c in DOCUMENTED_COMMANDS]
)
def test_every_documented_clipkit_command_parses(path, command, capsys):
    from clipkit.cli import build_parser

    try:
        args = build_parser().parse_args(clipkit_argv(command))
    except SystemExit as e:
        pytest.fail(f"{path.relative_to(ROOT)}: `{command}` does not parse: {capsys.readouterr().err.strip()} ({e})")
    assert getattr(args, "func", None) is not None, f"`{command}` names no command"


def test_the_scripts_take_the_flags_the_docs_give_them():
    """`accelerate launch training/train_clip.py ...` lines: the script's parser is ClipTrainConfig's flags."""
    import argparse

    from clipkit.config import add_config_arguments, config_from_args
    from clipkit.train.config import ClipTrainConfig

    lines = [c for p in DOC_SOURCES for c in shell_commands(p.read_text(encoding="utf-8")) if "train_clip.py" in c]
    assert lines
    for line in lines:
        words = shlex.split(line, comments=True)
        argv = words[words.index("training/train_clip.py") + 1 :]
        parser = argparse.ArgumentParser()
        add_config_arguments(parser, ClipTrainConfig)
        args = parser.parse_args(argv)
        if args.config:
            continue  # the file's fields are checked where it is read
        assert config_from_args(ClipTrainConfig, args).train_data, line


# ----------------------------------------------------------------------------- the generated pages


def load_hook(name: str):
    spec = importlib.util.spec_from_file_location(f"docs_hook_{name}", HOOKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_cli_reference_holds_every_command_and_its_help():
    from clipkit.cli import build_parser

    hook = load_hook("cli_reference")
    page = hook.cli_reference()
    for name, _, sub in hook._subcommands(build_parser()):
        assert f"`clipkit {name}` {{ #clipkit-{name} }}" in page
        assert hook._help(sub) in page  # the whole --help text, at the page's width
        for action, _, inner in hook._subcommands(sub):  # index build / add, judge train / score
            assert f"`clipkit {name} {action}`" in page and hook._help(inner) in page
    assert "--time-budget" in page and "--decoder.channels" in page and "--max-upload-mb" in page


def test_benchmark_pages_render_result_files_and_say_how_to_produce_missing_ones(tmp_path):
    hook = load_hook("benchmark_pages")
    (tmp_path / "train-bf16.json").write_text(
        json.dumps(
            {
                "command": "python benchmarks/bench_train.py --precision amp_bf16",
                "date": "2030-01-02 03:04 UTC",
                "machine": {
                    "cpu": "Test CPU 9000",
                    "cores": 2,
                    "python": "3.11.7",
                    "torch": "2.14.0",
                    "commit": "abc1234",
                },
                "results": {"ratio": {"median": 2.5}},
            }
        )
    )
    (tmp_path / "train-bf16.md").write_text(
        "<!-- provenance -->\n| trainer | samples/s |\n|---|---|\n| clipkit | 364 (350–370) |\n"
    )
    (tmp_path / "index_curve_200k.json").write_text(
        json.dumps({"command": "python benchmarks/bench_index.py", "results": {"rows": [1, 2]}})
    )
    page = hook.render_results(["train-bf16", "train-fp32", "index_curve_*"], tmp_path)
    assert "`python benchmarks/bench_train.py --precision amp_bf16`" in page
    assert "Test CPU 9000, 2 cores, Python 3.11.7, torch 2.14.0, commit abc1234" in page
    assert "2030-01-02 03:04 UTC" in page
    assert "| clipkit | 364 (350–370) |" in page and "provenance" not in page
    assert "No result for `train-fp32`" in page and "[Produce it](#produce-it)" in page
    assert "### `index_curve_200k`" in page and '"rows"' in page  # no table beside it: the numbers
    index = hook.render_index(tmp_path, {"train-*": "benchmarks/train.md"})
    assert "[train](train.md)" in index and "index_curve_200k" in index
    assert "No result files" in hook.render_index(tmp_path / "absent", {})


BENCHMARK_PAGES = sorted(p for p in (DOCS / "benchmarks").glob("*.md") if p.name != "index.md")


@pytest.mark.parametrize("page", BENCHMARK_PAGES, ids=lambda p: p.name)
def test_every_benchmark_page_renders_results_and_says_how_to_produce_them(page):
    hook = load_hook("benchmark_pages")
    text = page.read_text(encoding="utf-8")
    assert hook.MARKER.search(text), f"{page.name} has no <!-- results: NAME --> marker"
    assert "\n## Produce it\n" in text, f"{page.name} has no 'Produce it' section"
    produce = text.split("\n## Produce it\n", 1)[1]
    scripts = set(re.findall(r"python (benchmarks/bench_\w+\.py)", produce))
    assert scripts and all((ROOT / s).is_file() for s in scripts), f"{page.name}: commands {scripts}"


def test_every_benchmark_script_has_a_page():
    pages = " ".join(p.read_text(encoding="utf-8") for p in BENCHMARK_PAGES)
    missing = [s.name for s in sorted((ROOT / "benchmarks").glob("bench_*.py")) if f"benchmarks/{s.name}" not in pages]
    assert not missing, f"benchmark scripts without a docs page: {missing}"


# ----------------------------------------------------------------------------- the built site


class _Resources(HTMLParser):
    """Every URL an HTML page loads by itself (scripts, styles, fonts, images, frames, media), not its links."""

    LOADS = {
        "script": "src",
        "img": "src",
        "iframe": "src",
        "source": "src",
        "video": "src",
        "audio": "src",
        "embed": "src",
        "object": "data",
        "track": "src",
        "input": "src",
    }

    def __init__(self):
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "link" and attrs.get("href"):
            rel = (attrs.get("rel") or "").lower()
            if any(
                r in rel
                for r in (
                    "stylesheet",
                    "preload",
                    "preconnect",
                    "prefetch",
                    "icon",
                    "modulepreload",
                    "dns-prefetch",
                    "manifest",
                )
            ):
                self.urls.append(attrs["href"])
        elif tag in self.LOADS and attrs.get(self.LOADS[tag]):
            self.urls.append(attrs[self.LOADS[tag]])
        if attrs.get("srcset"):
            self.urls += [part.split()[0] for part in attrs["srcset"].split(",") if part.strip()]
        if attrs.get("style"):
            self.urls += re.findall(r"url\(\s*['\"]?([^'\")]+)", attrs["style"])


REMOTE = re.compile(r"^\s*(https?:)?//", re.IGNORECASE)


def external_resources(site: Path) -> list[str]:
    """'page: url' for every resource of the site that would be fetched from another host."""
    found = []
    for page in sorted(site.rglob("*.html")):
        parser = _Resources()
        html = page.read_text(encoding="utf-8")
        parser.feed(html)
        imports = re.findall(r"@import\s+(?:url\()?['\"]?((?:https?:)?//[^'\")\s;]+)", html)
        found += [f"{page.relative_to(site)}: {u}" for u in parser.urls + imports if REMOTE.match(u)]
    for css in sorted(site.rglob("*.css")):
        text = css.read_text(encoding="utf-8", errors="replace")
        urls = re.findall(r"url\(\s*['\"]?([^'\")]+)", text) + re.findall(r"@import\s+['\"]([^'\"]+)", text)
        found += [f"{css.relative_to(site)}: {u}" for u in urls if REMOTE.match(u)]
    return found


def test_the_offline_check_finds_what_a_page_would_fetch(tmp_path):
    (tmp_path / "a.html").write_text(
        '<html><head><link rel="stylesheet" href="https://fonts.googleapis.com/css?family=Roboto">'
        '<script src="//unpkg.com/iframe-worker/shim"></script><script src="assets/local.js"></script>'
        '<link rel="canonical" href="https://example.org/a"></head><body><a href="https://example.org">a link</a>'
        '<img src="images/x.png" srcset="https://cdn.example.org/x2.png 2x"><svg xmlns="http://www.w3.org/2000/svg">'
        "</svg></body></html>"
    )
    (tmp_path / "s.css").write_text("@font-face{src:url(https://fonts.gstatic.com/x.woff2)} .a{background:url(x.png)}")
    found = external_resources(tmp_path)
    assert sorted(u.split(": ", 1)[1] for u in found) == sorted(
        [
            "https://fonts.googleapis.com/css?family=Roboto",
            "//unpkg.com/iframe-worker/shim",
            "https://cdn.example.org/x2.png",
            "https://fonts.gstatic.com/x.woff2",
        ]
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The docs built strictly (a broken link, a missing page, an unrendered docstring fail the build)."""
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    command = [
        sys.executable,
        "-m",
        "mkdocs",
        "build",
        "--strict",
        "--config-file",
        str(ROOT / "mkdocs.yml"),
        "--site-dir",
        str(out),
    ]
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return out


def test_the_docs_build_strictly_with_every_page(site):
    for page in (
        "index",
        "getting-started",
        "training/clip",
        "training/unclip",
        "training/configs",
        "training/distributed",
        "retrieval",
        "serving",
        "generation",
        "evaluation",
        "formats",
        "architecture",
        "experiments/shapes",
        "experiments/labs",
        "benchmarks/index",
        "benchmarks/train",
        "reference/cli",
        "reference/api",
        "changelog",
    ):
        assert (site / f"{page}.html").is_file(), page
    cli = (site / "reference" / "cli.html").read_text(encoding="utf-8")
    assert "clipkit train-upsampler" in cli and "--max-upload-mb" in cli
    api = (site / "reference" / "api.html").read_text(encoding="utf-8")
    assert "encode_images" in api and "recall_target" in api  # signatures and docstrings rendered
    assert "0.3.0" in (site / "changelog.html").read_text(encoding="utf-8")


def test_the_built_site_fetches_nothing_from_the_internet(site):
    found = external_resources(site)
    assert not found, "the docs must work offline; these would be fetched:\n" + "\n".join(found[:20])


def test_the_built_site_is_not_tied_to_a_moment_of_development(site):
    """The generated pages too (the API reference quotes upstream projects' issue numbers; the changelog dates)."""
    skip = {"changelog.html", "404.html"}
    for page in sorted(site.rglob("*.html")):
        if page.name in skip or page.parent.name == "reference" and page.name != "cli.html":
            continue
        text = re.sub(r"<[^>]+>", " ", page.read_text(encoding="utf-8"))
        assert not moment_words(text), f"{page.relative_to(site)}: {moment_words(text)}"

"""The icon-theme dataset maker: distinct pictures, captions from names, name-disjoint splits, staged output."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from clipkit.data.shards import count_samples, read_samples
from clipkit.io import OutputError, read_manifest
from clipkit.labs import icons as I

PAPIRUS = Path("/usr/share/icons/Papirus")

# (folder, file name, colour, shape): every drawing stays inside the middle 70% of its view box, so the
# canvas corners always show the background.
ICONS = [
    ("48x48/apps", "firefox", "#e66000", "circle"),
    ("48x48/apps", "org.gnome.Nautilus", "#3584e4", "rect"),
    ("48x48/apps", "AdobePhotoshop", "#001d34", "circle-small"),
    ("48x48/apps", "1E64_notepad.0", "#f6d32d", "rect-wide"),
    ("48x48/places", "folder-music", "#26a269", "rect"),
    ("48x48/places", "folder-blue-music", "#1c71d8", "rect-tall"),
    ("48x48/devices", "printer", "#77767b", "rect-wide"),
    ("48x48/status", "battery-low", "#c01c28", "rect-tall"),
    ("48x48/mimetypes", "text-x-python", "#9141ac", "circle"),
    ("symbolic/actions", "go-next-symbolic", "#333333", "triangle"),
    ("16x16/apps", "firefox", "#000000", "rect"),  # a smaller variant of firefox: not the one drawn at 32 px
    ("48x48/emotes", "face-smile", "#f5c211", "circle"),  # emoji-like: excluded
]
SHAPES = {
    "circle": '<circle cx="24" cy="24" r="15" fill="{c}"/>',
    "circle-small": '<circle cx="24" cy="24" r="9" fill="{c}"/>',
    "rect": '<rect x="10" y="10" width="28" height="28" fill="{c}"/>',
    "rect-wide": '<rect x="8" y="16" width="32" height="16" fill="{c}"/>',
    "rect-tall": '<rect x="16" y="8" width="16" height="32" fill="{c}"/>',
    "triangle": '<path d="M12 10 L38 24 L12 38 Z" fill="{c}"/>',
}


def _svg(colour: str, shape: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="48" height="48" viewBox="0 0 48 48">'
        f"{SHAPES[shape].format(c=colour)}</svg>"
    )


@pytest.fixture(scope="module")
def theme(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("icons") / "Tiny"
    for folder, name, colour, shape in ICONS:
        (root / folder).mkdir(parents=True, exist_ok=True)
        (root / folder / f"{name}.svg").write_text(_svg(colour, shape))
    os.symlink("folder-music.svg", root / "48x48/places/folder-audio.svg")  # an alias: the same picture
    (root / "48x48/places/user-music.svg").write_bytes((root / "48x48/places/folder-music.svg").read_bytes())  # a copy
    return root


@pytest.fixture(scope="module")
def made(theme, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("made") / "icons"
    stats = I.make_icon_set(
        theme, out, size=32, renders_per_icon=4, unseen_fraction=0.2, val_renders=1, seed=3, progress=False
    )
    return out, stats


def _read(folder: Path) -> list[tuple]:
    return read_samples(folder, ("image", "text", "json", "__key__"))


@pytest.mark.parametrize(
    "name, caption",
    [
        ("folder-music", "folder music"),
        ("go-next-symbolic", "go next"),
        ("org.gnome.Nautilus", "nautilus"),
        ("AdobePhotoshop", "adobe photoshop"),
        ("1E64_notepad.0", "notepad"),
        ("text-x-python", "text x python"),
        ("brave-lgnggepjiihbfdbedefdhcffnmhcahbm-Default", "brave default"),
        ("application-vnd.ms-excel", "application vnd ms excel"),
    ],
)
def test_captions_come_from_names(name, caption):
    assert I.name_caption(name) == caption


def test_distinct_pictures_one_per_caption_emotes_left_out(theme):
    found = I.find_pictures(theme, size=32)
    captions = [p["caption"] for p in found]
    # 10 drawings: the alias and the byte copy of folder-music are the same picture; face-smile is an emote.
    assert captions == sorted({I.name_caption(n) for f, n, _, _ in ICONS if "emotes" not in f})
    assert len(found) == 10
    firefox = next(p for p in found if p["caption"] == "firefox")
    assert firefox["source"] == "48x48/apps/firefox.svg" and firefox["category"] == "apps"
    assert {p["category"] for p in found} == {"apps", "places", "devices", "status", "mimetypes", "actions"}


def test_counts_splits_and_captions_read_back_with_the_shard_reader(made):
    out, stats = made
    splits = {s: _read(out / s) for s in I.SPLITS}
    n_unseen = stats["names"]["unseen"]
    assert n_unseen == 2 and stats["names"]["train"] == 8 and stats["pictures"] == 10
    assert {s: len(v) for s, v in splits.items()} == {"train": 8 * 3, "val": 8 * 1, "unseen": 2 * 4} == stats["counts"]
    assert {s: count_samples(out / s) for s in I.SPLITS} == stats["counts"]  # the _stats.json files agree
    names = {s: {j["name"] for _, _, j, _ in v} for s, v in splits.items()}
    assert not names["unseen"] & (names["train"] | names["val"])  # unseen names never in train
    assert names["val"] == names["train"] and len(names["train"]) == 8
    for split, rows in splits.items():
        for image, text, meta, key in rows:
            assert image.size == (32, 32) and meta["split"] == split
            assert text == meta["name"] == I.name_caption(meta["icon"])
            assert meta["category"] == meta["source"].split("/")[1]
            assert key == f"{meta['picture']:05d}{meta['render']:03d}"
            corner = np.asarray(image)[0, 0]  # the background shows there
            assert tuple(corner) == I.BACKGROUNDS[meta["background"]], (corner, meta)
            assert (meta["render"] < 1) == (split == "val") or split == "unseen"
    pictures = json.loads((out / "pictures.json").read_text())
    assert [p["split"] for p in pictures].count("unseen") == 2
    manifest = read_manifest(out, I.FORMAT, fix="remake it")
    assert {"train/00000.tar", "val/00000.tar", "unseen/00000.tar", "pictures.json"} <= set(manifest["parts"])


def test_renders_vary_in_background_and_placement(made):
    out, _ = made
    rows = _read(out / "train") + _read(out / "val")
    one = [r for r in rows if r[2]["name"] == "folder music"]
    assert len({r[2]["background"] for r in one}) == 4  # four renders, four backgrounds
    arrays = [np.asarray(r[0]) for r in one]
    assert all(not np.array_equal(a, b) for i, a in enumerate(arrays) for b in arrays[i + 1 :])


def test_deterministic_given_a_seed_and_a_picture_renders_the_same_whatever_the_limit(theme, made, tmp_path):
    out, _ = made
    again = I.make_icon_set(
        theme, tmp_path / "again", size=32, renders_per_icon=4, unseen_fraction=0.2, seed=3, progress=False
    )
    assert again["counts"] == made[1]["counts"]
    for split in I.SPLITS:
        assert (tmp_path / "again" / split / "00000.tar").read_bytes() == (out / split / "00000.tar").read_bytes()
    other = I.make_icon_set(
        theme, tmp_path / "other", size=32, renders_per_icon=4, unseen_fraction=0.2, seed=4, progress=False
    )
    assert (tmp_path / "other/train/00000.tar").read_bytes() != (out / "train/00000.tar").read_bytes()
    assert other["pictures"] == 10
    few = I.make_icon_set(
        theme, tmp_path / "few", size=32, renders_per_icon=4, unseen_fraction=0.0, limit=4, seed=3, progress=False
    )
    assert few["pictures"] == 4 and few["counts"]["unseen"] == 0 and few["pictures_found"] == 10
    full = {(r[2]["name"], r[2]["render"]): np.asarray(r[0]) for s in I.SPLITS for r in _read(out / s)}
    for image, _, meta, _ in _read(tmp_path / "few" / "train") + _read(tmp_path / "few" / "val"):
        assert np.array_equal(np.asarray(image), full[(meta["name"], meta["render"])])


def test_missing_theme_fails_at_once_with_the_install_line(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install surely-absent-icon-theme"):
        I.make_icon_set("surely-absent", tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no SVG icons"):
        I.make_icon_set(tmp_path / "empty", tmp_path / "out", progress=False)
    with pytest.raises(ValueError, match="val_renders"):
        I.make_icon_set(tmp_path / "empty", tmp_path / "out", renders_per_icon=1, val_renders=1, progress=False)


def test_output_goes_through_the_io_contract(theme, tmp_path):
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("keep me")
    with pytest.raises(OutputError, match="refusing to replace"):
        I.make_icon_set(theme, user, size=32, renders_per_icon=2, progress=False)
    assert (user / "notes.txt").read_text() == "keep me"
    with pytest.raises(OutputError, match="input"):
        I.make_icon_set(theme, theme / "out", size=32, renders_per_icon=2, progress=False)


def test_cli_makes_the_set(theme, tmp_path, capsys):
    from clipkit.cli import main

    code = main(
        [
            "icons",
            "--theme",
            str(theme),
            "--out",
            str(tmp_path / "set"),
            "--size",
            "32",
            "--renders-per-icon",
            "3",
            "--limit",
            "6",
            "--seed",
            "1",
        ]
    )
    assert code == 0
    assert "wrote 18 renders of 6 pictures (10 in Tiny)" in capsys.readouterr().out
    assert sum(count_samples(tmp_path / "set" / s) for s in I.SPLITS) == 18


@pytest.mark.slow
@pytest.mark.skipif(not PAPIRUS.is_dir(), reason="papirus-icon-theme is not installed")
def test_twenty_icons_of_the_installed_papirus_theme(tmp_path):
    stats = I.make_icon_set(
        "papirus", tmp_path / "papirus", size=64, renders_per_icon=2, limit=20, seed=0, progress=False
    )
    assert stats["pictures"] == 20 and stats["renders"] == 40 and stats["pictures_found"] > 5000
    rows = [r for s in I.SPLITS for r in _read(tmp_path / "papirus" / s)]
    assert len(rows) == 40 and all(r[0].size == (64, 64) and r[1] == r[2]["name"] for r in rows)
    assert all(r[2]["category"] not in I.EXCLUDED_CATEGORIES for r in rows)

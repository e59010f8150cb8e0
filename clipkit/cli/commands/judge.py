"""`clipkit judge`: train a judge on labelled real images; score generated images with it."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("judge", help="train / use an independent judge of generated images (work in progress)")
    p.set_defaults(func=lambda args: 2)

"""Generate images with a trained unCLIP pipeline (same as `clipkit generate`).

python decoder/generate.py --pipeline runs/unclip --prompt "a red circle wearing a hat" --out out/
python decoder/generate.py --pipeline runs/unclip --expr 'img:"circle.png" + text:"hat"' --out out/
python decoder/generate.py --pipeline runs/unclip --interpolate a.png "text:a blue star" --num 8 --out out/
"""

import sys

from clipkit.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["generate", *sys.argv[1:]]))

"""Zero-shot classification from the command line: the same code as `clipkit zero-shot`.

python retrieval/zero_shot.py --model M --images photos/ --labels "cat,dog" --out preds.csv
python retrieval/zero_shot.py --model M --labelled-folder root/ --templates openai --confusion cm.png
python retrieval/zero_shot.py --model M --shards 'val/{00000..00001}.tar' --label-field shape
"""

from __future__ import annotations

import sys

from clipkit.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["zero-shot", *sys.argv[1:]]))

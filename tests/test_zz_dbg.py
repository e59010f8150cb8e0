import os
from pathlib import Path
from tests.test_output_contract import *  # noqa

def test_dbg(env, tmp_path, capsys):
    template, own_input, _ = OUTPUTS[("eval", "--output")]
    out = Path(_argv([own_input], env, tmp_path)[0])
    argv = _argv(template, env, out)
    print(argv, os.path.exists(out), sorted(os.listdir(out)))
    rc = main(argv)
    print(rc, capsys.readouterr())
    assert 0

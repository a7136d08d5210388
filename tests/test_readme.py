"""The README's Python snippets run as written, in order, in one namespace."""

import os
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_snippets_run(tmp_path, capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 4
    cwd = os.getcwd()
    os.chdir(tmp_path)  # snippets write checkpoints and weights files
    try:
        namespace: dict = {}
        for k, code in enumerate(blocks):
            exec(compile(code, f"README.md python block {k + 1}", "exec"), namespace)  # noqa: S102
    finally:
        os.chdir(cwd)
    assert namespace["tr2"].t == namespace["tr"].t * 2

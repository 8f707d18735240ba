"""`healthscore fit`/`adapt` killed while writing the model file leave no half-written
model under its name (a file that MODEL_PATH may already name)."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import orjson

from healthscore.core.scoring.model import DEFAULT_MODEL_PATH, V3_MODEL_PATH, load_model
from healthscore_lab.evaluation.command import _write_model

# the child: file size limited below the model's size, and the signal the kernel sends
# at the limit left deadly (Python ignores it by default): killed in the middle of a write
_KILLED_WHILE_WRITING = """
import resource, signal, sys
from pathlib import Path
import orjson
from healthscore_lab.evaluation.command import _write_model

out, source, limit = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
config = orjson.loads(source.read_bytes())
signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
_write_model(out, config, ["v9: written by the test"], {})
"""


def test_a_fit_killed_while_writing_leaves_the_previous_file_whole(tmp_path: Path) -> None:
    out = tmp_path / "health_model.v9.json"
    out.write_bytes(V3_MODEL_PATH.read_bytes())  # what the live service may be reading
    limit = 4096
    assert DEFAULT_MODEL_PATH.stat().st_size > limit
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            _KILLED_WHILE_WRITING,
            str(out),
            str(DEFAULT_MODEL_PATH),
            str(limit),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert child.returncode == -signal.SIGXFSZ, child.stderr  # it did die mid-write
    assert load_model(out).version == load_model(V3_MODEL_PATH).version


def test_the_model_file_is_written_whole(tmp_path: Path) -> None:
    out = tmp_path / "health_model.v9.json"
    config = orjson.loads(DEFAULT_MODEL_PATH.read_bytes())
    _write_model(out, config, ["v9: written by the test"], {})
    assert load_model(out).version == load_model(DEFAULT_MODEL_PATH).version
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # nothing left beside it

"""The demo's log file when the state directory cannot take it."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import structlog

from healthscore.errors import StartupRefused
from healthscore_lab.demo import log_to_file

FULL_DISK = Path("/dev/full")  # every write fails with ENOSPC


@pytest.mark.skipif(not FULL_DISK.exists(), reason="needs /dev/full")
def test_a_full_disk_ends_the_log_not_the_demo(capsys: pytest.CaptureFixture[str]) -> None:
    # every log call of the service raised OSError: batches' lines, the handler's own
    # error line and the libraries' handlers, ~950 lines of tracebacks, exit 1
    with log_to_file(FULL_DISK) as summary:
        structlog.get_logger().info("batch_committed", records=3)
        structlog.get_logger().warning("relay_failed", error="KafkaTimeoutError")
        logging.getLogger("aiokafka").warning("a library's warning")
    assert summary.lines()[-1] == (
        "the log is incomplete: writing /dev/full failed (No space left on device); "
        "free space there or set STATE_DIR to another directory"
    )
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "warning: the demo's log /dev/full cannot be written (No space left on device); "
        "the demo goes on without it"
    ]


def test_a_state_directory_that_cannot_be_made_is_refused_in_one_line(tmp_path: Path) -> None:
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("")
    with (
        pytest.raises(StartupRefused, match=r"set STATE_DIR to a writable directory"),
        log_to_file(not_a_directory / "demo.log"),
    ):
        pass

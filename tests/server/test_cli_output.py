"""What `nearcat classify` prints for answers a person could misread or that could crash it."""

from __future__ import annotations

import pytest

from server.commands.classify import print_result
from server.proto.nearcat.v1 import nearcat_pb2 as pb


def test_an_answer_without_categories_is_printed_not_a_crash(
    capsys: pytest.CaptureFixture[str],
) -> None:
    item = pb.ClassifyBatchItem(classification=pb.Classification(decision=pb.UNKNOWN))
    print_result("photo.jpg", item, "v1", as_json=False)
    assert capsys.readouterr().out == "photo.jpg: no category (unknown)\n"


def _raising(exc: BaseException) -> None:
    raise exc


def test_an_interrupt_inside_a_compiled_modules_start_is_an_interrupt(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """pybind11 modules (onnxruntime) turn a signal during their initialisation into
    "ImportError: initialization failed" caused by the KeyboardInterrupt: a stop, not a crash."""
    from server import cli
    from server.commands import operate

    def import_interrupted(args: object) -> None:
        try:
            _raising(KeyboardInterrupt())
        except KeyboardInterrupt as interrupt:
            raise ImportError("initialization failed") from interrupt

    monkeypatch.setattr(operate, "cmd_status", import_interrupted)
    with pytest.raises(SystemExit) as stopped:
        cli.main(["status"])
    assert stopped.value.code == 130
    assert "nearcat: interrupted" in capsys.readouterr().err


def test_a_real_import_error_is_not_taken_for_an_interrupt(monkeypatch: pytest.MonkeyPatch) -> None:
    from server import cli
    from server.commands import operate

    monkeypatch.setattr(operate, "cmd_status", lambda args: _raising(ImportError("no onnxruntime")))
    with pytest.raises(ImportError, match="no onnxruntime"):
        cli.main(["status"])

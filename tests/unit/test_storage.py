from pathlib import Path

import pytest

from tasks.core.spec import DEFAULT_SPEC, load_spec
from tasks.core.storage import IntegrityError, LocalStore, StorageError, verify_dir
from tasks.serving.rollout import publish_version
from tasks.serving.triton_client import TritonError


def test_published_directory_is_complete_and_verified(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.publish_dir("m/1", {"model.onnx": b"onnx", "model.py": b"py"})
    assert sorted(p.name for p in (tmp_path / "m" / "1").iterdir()) == [
        "manifest.json",
        "model.onnx",
        "model.py",
    ]
    assert set(verify_dir(store, "m/1")) == {"model.onnx", "model.py"}


def test_failed_publish_leaves_nothing_behind(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    with pytest.raises(TypeError):
        store.publish_dir("m/1", {"model.onnx": b"onnx", "model.py": "not bytes"})  # type: ignore[dict-item]
    assert not (tmp_path / "m" / "1").exists()
    assert list((tmp_path / "m").iterdir()) == []


def test_published_version_is_never_rewritten(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.publish_dir("m/1", {"model.onnx": b"a"})
    with pytest.raises(StorageError, match="never rewritten"):
        store.publish_dir("m/1", {"model.onnx": b"b"})


@pytest.mark.parametrize(
    ("tamper", "problem"),
    [
        (lambda d: (d / "model.onnx").write_bytes(b"evil"), "model.onnx sha256"),
        (lambda d: (d / "model.onnx").unlink(), "model.onnx is missing"),
        (lambda d: (d / "extra.bin").write_bytes(b"x"), "unexpected file extra.bin"),
        (lambda d: (d / "manifest.json").unlink(), "has no manifest.json"),
    ],
)
def test_tampered_directory_is_refused(tmp_path: Path, tamper, problem: str) -> None:
    store = LocalStore(tmp_path)
    store.publish_dir("m/1", {"model.onnx": b"onnx"})
    tamper(tmp_path / "m" / "1")
    with pytest.raises(IntegrityError, match=problem):
        verify_dir(store, "m/1")


def test_triton_bytecode_cache_is_not_a_tamper(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.publish_dir("m/1", {"model.py": b"print()"})
    (tmp_path / "m" / "1" / "__pycache__").mkdir()
    (tmp_path / "m" / "1" / "__pycache__" / "model.cpython-311.pyc").write_bytes(b"\0")
    assert set(verify_dir(store, "m/1")) == {"model.py"}


def test_keys_cannot_escape_the_repository(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="escapes"):
        LocalStore(tmp_path / "repo").write_file("../outside.txt", b"x")


def test_remove_dir_removes_the_whole_version(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.publish_dir("m/1", {"model.onnx": b"a"})
    store.remove_dir("m/1")
    assert list((tmp_path / "m").iterdir()) == []


def test_publish_version_is_idempotent_and_refuses_conflicts(tmp_path: Path) -> None:
    spec = load_spec(DEFAULT_SPEC)
    store = LocalStore(tmp_path)
    first = publish_version(store, str(tmp_path), spec, 4, b"onnx-bytes", "python")
    again = publish_version(store, str(tmp_path), spec, 4, b"onnx-bytes", "python")
    assert first == again
    # config.pbtxt describes what is served, so it is written when a version goes live.
    assert not (tmp_path / spec.name / "config.pbtxt").exists()
    with pytest.raises(TritonError, match="already holds different files"):
        publish_version(store, str(tmp_path), spec, 4, b"other-bytes", "python")

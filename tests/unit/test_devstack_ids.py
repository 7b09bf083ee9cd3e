"""The devstack's Kafka cluster ids: the storage tool reads an id starting with "-" as an option
(`kafka-storage: error: argument --cluster-id/-t: expected one argument`), one fresh id in 64."""

import importlib.util
import sys
import uuid
from pathlib import Path
from types import ModuleType

import pytest

DEVSTACK = Path(__file__).resolve().parents[2] / "deploy" / "local" / "devstack.py"


def load_devstack() -> ModuleType:
    spec = importlib.util.spec_from_file_location("devstack_under_test", DEVSTACK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_a_fresh_cluster_id_never_starts_with_a_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    devstack = load_devstack()
    # 0xf8 0x.. encodes to "-" first in urlsafe base64; the next uuid does not
    dashed = uuid.UUID(bytes=bytes([0xF8]) + bytes(15))
    plain = uuid.UUID(bytes=bytes(16))
    drawn = iter([dashed, dashed, plain])
    monkeypatch.setattr(devstack.uuid, "uuid4", lambda: next(drawn))
    cluster_id = devstack.new_cluster_id()
    assert cluster_id == "AAAAAAAAAAAAAAAAAAAAAA"
    assert len(cluster_id) == 22

"""The committed generated code must be what grpcio-tools makes of the .proto files today."""

from __future__ import annotations

import filecmp
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTO_ROOT = ROOT / "protos"
PACKAGE = PROTO_ROOT / "trainwire" / "v1"


def test_generated_code_matches_protos(tmp_path: Path) -> None:
    protos = sorted(PACKAGE.glob("*.proto"))
    assert protos, "no .proto files found"
    shutil.copytree(PROTO_ROOT, tmp_path / "protos", ignore=shutil.ignore_patterns("*_pb2*"))
    out = tmp_path / "protos"
    subprocess.run(
        [
            sys.executable, "-m", "grpc_tools.protoc", f"-I{out}",
            f"--python_out={out}", f"--pyi_out={out}", f"--grpc_python_out={out}",
            *[str(out / "trainwire" / "v1" / p.name) for p in protos],
        ],
        check=True,
    )  # fmt: skip
    generated = sorted(p.name for p in (out / "trainwire" / "v1").glob("*_pb2*"))
    committed = sorted(p.name for p in PACKAGE.glob("*_pb2*"))
    assert generated == committed, (
        "generated files differ from the committed ones: run `make proto`"
    )
    stale = [
        name
        for name in generated
        if not filecmp.cmp(out / "trainwire" / "v1" / name, PACKAGE / name, shallow=False)
    ]
    assert not stale, f"stale generated code {stale}: run `make proto` and commit the result"


def test_every_enum_starts_with_unspecified() -> None:
    from trainwire.v1 import datasets_pb2, jobs_pb2, tensor_pb2

    for module in (datasets_pb2, jobs_pb2, tensor_pb2):
        for enum in module.DESCRIPTOR.enum_types_by_name.values():
            assert enum.values[0].number == 0
            assert enum.values[0].name.endswith("_UNSPECIFIED"), enum.name

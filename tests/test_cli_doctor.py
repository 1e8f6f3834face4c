"""trainset doctor in a fresh `trainset init` repository: remotes that work and remotes that do not."""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

import boto3
import moto.server as moto_server
import pytest

from trainset import cli, doctor, kernels

from conftest import run

TRAINSET = str(Path(sys.executable).parent / "trainset")


@pytest.fixture
def repo(tmp_path: Path, capsys) -> Path:
    path = tmp_path / "set"
    assert cli.main(["init", "--demo", str(path)]) == 0
    capsys.readouterr()
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def by_name(checks) -> dict[str, doctor.Check]:
    return {c.check: c for c in checks}


def test_doctor_local_remote_ok(repo: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "store").mkdir()
    run(["dvc", "remote", "add", "-d", "store", str(tmp_path / "store")], repo)
    checks = by_name(doctor.run(repo))
    assert checks["dvc remote store"].status == "ok" and "(default)" in checks["dvc remote store"].detail
    assert checks["git repository"].status == checks["dvc repository"].status == checks["params.yaml"].status == "ok"
    assert checks["python"].status == "ok" and checks["snakemake"].status == "ok" and checks["dvc"].status == "ok"
    backend = kernels.backend()
    assert checks["gpu"].detail.startswith("CPU (NumPy)" if backend.name == "numpy" else "GPU (CuPy)")
    assert not [c for c in checks.values() if c.status == "fail"]
    assert cli.main(["doctor", "--root", str(repo)]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].split() == ["check", "status", "detail"] and "dvc remote store" in table


def test_doctor_fails_on_unreachable_remotes_and_missing_sources(repo: Path, tmp_path: Path) -> None:
    run(["dvc", "remote", "add", "gone", str(tmp_path / "no/such/folder")], repo)
    run(["dvc", "remote", "add", "s3down", "s3://bucket/prefix"], repo)
    run(["dvc", "remote", "modify", "s3down", "endpointurl", f"http://127.0.0.1:{free_port()}"], repo)
    run(["dvc", "remote", "modify", "s3down", "connect_timeout", "2"], repo)
    run(["dvc", "remote", "modify", "s3down", "read_timeout", "2"], repo)
    run(["dvc", "remote", "modify", "--local", "s3down", "access_key_id", "k"], repo)  # no credential lookup
    run(["dvc", "remote", "modify", "--local", "s3down", "secret_access_key", "s"], repo)
    params = repo / "params.yaml"
    params.write_text(params.read_text().replace("sources: []", f"sources: [{{name: lost, kind: image_folder, path: {tmp_path}/lost, license: x}}]"))

    proc = run([TRAINSET, "doctor", "--root", str(repo), "--json", "--remote-timeout", "30"], repo, check=False)
    assert proc.returncode == 1, proc.stderr
    result = json.loads(proc.stdout)
    checks = {c["check"]: c for c in result["checks"]}
    assert result["ok"] is False
    assert checks["dvc remote gone"]["status"] == "fail" and "does not exist" in checks["dvc remote gone"]["detail"]
    assert checks["dvc remote s3down"]["status"] == "fail" and "unreachable" in checks["dvc remote s3down"]["detail"]
    assert checks["source lost"]["status"] == "fail" and f"{tmp_path}/lost" in checks["source lost"]["detail"]
    assert {c["status"] for c in result["checks"]} <= {"ok", "warn", "fail"}
    assert "CPU (NumPy)" in checks["gpu"]["detail"] or "GPU (CuPy)" in checks["gpu"]["detail"]


def test_doctor_outside_a_repository(tmp_path: Path) -> None:
    checks = by_name(doctor.run(tmp_path))
    assert checks["params.yaml"].status == "fail" and "missing" in checks["params.yaml"].detail
    assert checks["dvc repository"].status == "warn" and "dvc remote" not in " ".join(checks)
    assert doctor.exit_code(list(checks.values())) == 1


def test_doctor_s3_remote_states(repo: Path) -> None:
    """Against moto's S3 server on loopback: no bucket fails; the bucket without the prefix warns
    (the first push makes it); an object under the prefix is ok."""
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        run(["dvc", "remote", "add", "s3", "s3://bucket/prefix"], repo)
        run(["dvc", "remote", "modify", "s3", "endpointurl", f"http://{host}:{port}"], repo)
        run(["dvc", "remote", "modify", "--local", "s3", "access_key_id", "k"], repo)
        run(["dvc", "remote", "modify", "--local", "s3", "secret_access_key", "s"], repo)
        client = boto3.client("s3", endpoint_url=f"http://{host}:{port}", region_name="us-east-1",
                              aws_access_key_id="k", aws_secret_access_key="s")

        def state() -> doctor.Check:
            return by_name(doctor.remote_checks(repo))["dvc remote s3"]

        assert state().status == "fail" and "bucket 'bucket' does not exist" in state().detail
        client.create_bucket(Bucket="bucket")
        assert state().status == "warn" and "first dvc push" in state().detail
        client.put_object(Bucket="bucket", Key="prefix/files/md5/00/x", Body=b"x")
        assert state().status == "ok" and state().detail.endswith("reachable")
    finally:
        server.stop()

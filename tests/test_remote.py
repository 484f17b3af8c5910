"""Sharing trained models through a DVC remote: `dvc push` to a local-folder remote, a fresh clone,
`dvc pull`, and `dvc repro` there reruns nothing (README "Share models through a DVC remote")."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.dvc_repo import environment, run

GIT = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com"]
# Outputs a teammate needs from the remote: the data, both models, the submission and the Kaggle bundle.
SHARED_OUTPUTS = (
    "data/synthetic/train.csv",
    "data/test_missing_count.csv",
    "models/classifier/fold_0.pt",
    "models/unet/fold_0.pt",
    "data/submission.csv",
    "models/kaggle/bundle.json",
)


def test_models_round_trip_through_a_local_remote(dag_repo: Path, tmp_path: Path) -> None:
    # The session's DAG, copied so that its git history and config stay as the other tests expect.
    origin = tmp_path / "origin"
    shutil.copytree(dag_repo, origin, symlinks=True)
    remote = tmp_path / "remote"
    run(origin, "dvc", "remote", "add", "--default", "shared", str(remote))
    run(origin, "git", "add", "-A")
    run(origin, *GIT, "commit", "-qm", "trained models, shared through the remote")
    pushed = run(origin, "dvc", "push")
    assert "pushed" in pushed.stdout.lower(), pushed.stdout
    assert any(remote.rglob("*")), "nothing reached the remote"

    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(origin), str(clone)], check=True, env=environment())
    assert not (clone / "models/unet/fold_0.pt").exists()  # git holds no model: only the remote does
    assert not (clone / ".dvc/cache").exists()
    run(clone, "dvc", "pull")
    for name in SHARED_OUTPUTS:
        assert (clone / name).read_bytes() == (origin / name).read_bytes(), name

    status = run(clone, "dvc", "status").stdout
    assert "up to date" in status, status
    repro = run(clone, "dvc", "repro").stdout
    assert "Running stage" not in repro, repro
    assert "up to date" in repro, repro

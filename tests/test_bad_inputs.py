"""The bad input catalogue: every kind of bad input a user can hand the pipeline, each run through the real
stage command (`python -m stages.<stage>`).

One repository is built for the module (the tiny dataset, a one-epoch resnet18 classifier, `dvc repro
threshold`); each case runs in its own copy of it, breaks one input there (a file of the repository, or of
a copy of the dataset that `data.root` then points at) and checks what the user sees: exit code 1, stderr
exactly one line `error: ...` naming the file, row or param, no traceback, no temporary file left in data/
or models/, and every output of the stage byte for byte as before. The cases that must work (grayscale and
4-channel images, images the CSVs do not list) check success, and the one warning line where one is due.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import pytest
import yaml

from tests.conftest import TINY_TRAINING
from tests.dvc_repo import REPO, copy_repo, environment, run, set_params

STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
OVERRIDES = {"classifier": {**TINY_TRAINING, "backbone": "resnet18", "folds": 1}}
HEIGHT, WIDTH = 64, 400  # the tiny dataset's images (tests/dvc_repo.py TINY_PARAMS)
DATASET = "data/synthetic"  # the cases that break data break a copy of it
WORKERS = min(2, os.cpu_count() or 1)  # cases run at once
CHECKPOINT = "models/classifier/fold_0.pt"
TRAIN_SCORES = "data/train_missing_count.csv"


# --- one copy of the built repository per case ----------------------------------------------------------


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = copy_repo(tmp_path_factory.mktemp("catalogue"), OVERRIDES)
    run(repo, "dvc", "repro", "threshold")
    return repo


def clone(repo: Path, destination: Path) -> Path:
    """What a stage command needs of the built repository, for one case: params.yaml copied, stages/ linked,
    data/ and models/ hard-linked file by file (cheap; a stage replaces its outputs by renaming, and the
    breakers below replace files, never write into them)."""
    destination.mkdir(parents=True)
    shutil.copy2(repo / "params.yaml", destination / "params.yaml")
    (destination / "stages").symlink_to(repo / "stages", target_is_directory=True)
    for name in ("data", "models"):
        shutil.copytree(repo / name, destination / name, copy_function=os.link)
    return destination


def replace(path: Path, content: bytes | str) -> None:
    """Write a file of a clone anew: never into the inode it shares with the built repository."""
    path.unlink(missing_ok=True)
    path.write_bytes(content.encode() if isinstance(content, str) else content)


def outputs(stage: str) -> list[str]:
    """A stage's outputs and metrics, as dvc.yaml declares them."""
    declared = STAGES[stage]
    metrics = (next(iter(m)) if isinstance(m, dict) else m for m in declared.get("metrics", []))
    return [*declared.get("outs", []), *metrics]


def digests(repo: Path, stage: str) -> dict[str, str]:
    """The SHA-256 of every file of a stage's outputs, by repository-relative name."""
    found = {}
    for name in outputs(stage):
        path = repo / name
        for item in [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()):
            found[str(item.relative_to(repo))] = hashlib.sha256(item.read_bytes()).hexdigest()
    return found


def temporary_files(repo: Path) -> list[str]:
    return sorted(
        str(p.relative_to(repo)) for name in ("data", "models") for p in (repo / name).rglob(".*.tmp")
    )


# --- running a stage ---------------------------------------------------------------------------------------


def file_size_limit(size: int) -> Callable[[], None]:
    """A disk that fills up: in the child, a write past `size` bytes fails with EFBIG (SIGXFSZ, which would
    kill the process, ignored)."""

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))

    return limit


def run_stage(
    repo: Path, stage: str, env: dict[str, str] | None = None, size_limit: int | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", f"stages.{stage}"],
        cwd=repo,
        env={**environment(), **(env or {})},
        capture_output=True,
        text=True,
        preexec_fn=file_size_limit(size_limit) if size_limit else None,
    )


# --- breaking inputs: each gets the repository and the case's scratch folder (the dataset copy is in
# scratch/dataset), changes one thing and returns the names the expected message uses ----------------------

Breaker = Callable[[Path, Path], dict[str, object] | None]


def dataset(scratch: Path) -> Path:
    return scratch / "dataset"


def lines_of(path: Path) -> list[str]:
    return path.read_text().splitlines()


def write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("\n".join(lines) + "\n")


def train_images(scratch: Path) -> list[str]:
    return sorted(p.name for p in (dataset(scratch) / "train_images").iterdir())


def listed_image(scratch: Path) -> str:
    """The image of train.csv's line 2 (the tiny dataset's train.csv is in the new format)."""
    return lines_of(dataset(scratch) / "train.csv")[1].split(",")[0]


def clean_image(scratch: Path) -> str:
    listed = {line.split(",")[0] for line in lines_of(dataset(scratch) / "train.csv")[1:]}
    return next(name for name in train_images(scratch) if name not in listed)


def first_test_image(scratch: Path) -> str:
    return sorted(p.name for p in (dataset(scratch) / "test_images").iterdir())[0]


def nothing(repo: Path, scratch: Path) -> None:
    return None


def image_cut_in_half(suffix: str) -> Breaker:
    """A train image whose file lost its second half (a JPEG; or a clean image turned into a PNG)."""

    def breaks(repo: Path, scratch: Path) -> dict[str, object]:
        folder = dataset(scratch) / "train_images"
        path = folder / (listed_image(scratch) if suffix == ".jpg" else clean_image(scratch))
        if suffix != path.suffix:
            cv2.imwrite(str(path.with_suffix(suffix)), cv2.imread(str(path)))
            path.unlink()
            path = path.with_suffix(suffix)
        content = path.read_bytes()
        path.write_bytes(content[: len(content) // 2])
        return {"image": path.name}

    return breaks


def image_bytes(content: bytes) -> Breaker:
    def breaks(repo: Path, scratch: Path) -> dict[str, object]:
        name = listed_image(scratch)
        (dataset(scratch) / "train_images" / name).write_bytes(content)
        return {"image": name}

    return breaks


def image_of_size(folder: str, height: int, width: int) -> Breaker:
    def breaks(repo: Path, scratch: Path) -> dict[str, object]:
        name = listed_image(scratch) if folder == "train_images" else first_test_image(scratch)
        path = dataset(scratch) / folder / name
        cv2.imwrite(str(path), cv2.resize(cv2.imread(str(path)), (width, height)))
        return {"image": name}

    return breaks


def grayscale_jpeg(repo: Path, scratch: Path) -> dict[str, object]:
    path = dataset(scratch) / "train_images" / listed_image(scratch)
    cv2.imwrite(str(path), cv2.imread(str(path), cv2.IMREAD_GRAYSCALE))
    return {"image": path.name}


def four_channel_png(repo: Path, scratch: Path) -> dict[str, object]:
    """A clean image (no rows in the new-format train.csv, so its name may change) as an RGBA PNG."""
    path = dataset(scratch) / "train_images" / clean_image(scratch)
    rgba = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2BGRA)
    rgba[..., 3] = 128
    cv2.imwrite(str(path.with_suffix(".png")), rgba)
    path.unlink()
    return {"image": path.with_suffix(".png").name}


def listed_image_missing(repo: Path, scratch: Path) -> dict[str, object]:
    name = listed_image(scratch)
    (dataset(scratch) / "train_images" / name).unlink()
    return {"image": name}


def sample_image_missing(repo: Path, scratch: Path) -> dict[str, object]:
    name = first_test_image(scratch)
    (dataset(scratch) / "test_images" / name).unlink()
    sample = lines_of(dataset(scratch) / "sample_submission.csv")
    return {"image": name, "line": next(n for n, line in enumerate(sample, 1) if line.startswith(name + ","))}


def extra_image(folder: str) -> Breaker:
    def breaks(repo: Path, scratch: Path) -> dict[str, object]:
        cv2.imwrite(
            str(dataset(scratch) / folder / "zzz_extra.jpg"), np.full((HEIGHT, WIDTH, 3), 90, np.uint8)
        )
        return None

    return breaks


def empty_test_folder(repo: Path, scratch: Path) -> None:
    for path in (dataset(scratch) / "test_images").iterdir():
        path.unlink()


def old_format_train_csv(repo: Path, scratch: Path, drop: int = 0) -> dict[str, object]:
    """train.csv rewritten in the old format (every image, every class), without the first `drop` clean
    images."""
    path = dataset(scratch) / "train.csv"
    rles = pd.read_csv(path, dtype=str).set_index(["ImageId", "ClassId"])["EncodedPixels"].to_dict()
    clean = [name for name in train_images(scratch) if name not in {image for image, _ in rles}]
    images = [name for name in train_images(scratch) if name not in clean[:drop]]
    rows = [f"{image}_{c},{rles.get((image, str(c)), '')}" for image in images for c in range(1, 5)]
    write_lines(path, ["ImageId_ClassId,EncodedPixels", *rows])
    return {"image": clean[0] if drop else ""}


def unlisted_in_old_format(repo: Path, scratch: Path) -> dict[str, object]:
    return old_format_train_csv(repo, scratch, drop=2)


def train_csv_edit(edit: Callable[[list[str]], dict[str, object] | None], name: str = "train.csv") -> Breaker:
    """Edit the lines of a CSV of the dataset copy."""

    def breaks(repo: Path, scratch: Path) -> dict[str, object] | None:
        path = dataset(scratch) / name
        lines = lines_of(path)
        fields = edit(lines)
        write_lines(path, lines)
        return fields

    return breaks


def set_line_2(image: str | None = None, class_id: str | None = None, rle: str | None = None) -> Breaker:
    """Replace cells of train.csv's line 2 (ImageId,ClassId,EncodedPixels)."""

    def edit(lines: list[str]) -> dict[str, object]:
        old = lines[1].split(",")
        new = [image or old[0], class_id or old[1], old[2] if rle is None else rle]
        lines[1] = ",".join(new)
        return {"image": new[0], "class_id": new[1]}

    return train_csv_edit(edit)


def header(text: str, name: str = "train.csv") -> Breaker:
    def edit(lines: list[str]) -> None:
        lines[0] = text

    return train_csv_edit(edit, name)


def drop_class_column(lines: list[str]) -> None:
    lines[:] = [",".join(line.split(",")[0::2]) for line in lines]


def old_row_in_new_file(lines: list[str]) -> dict[str, object]:
    image = lines[1].split(",")[0]
    lines.append(f"{image}_3,1 10")
    return {"image": image, "line": len(lines)}


def new_row_in_old_file(repo: Path, scratch: Path) -> dict[str, object]:
    old_format_train_csv(repo, scratch)
    path = dataset(scratch) / "train.csv"
    lines = lines_of(path)
    lines.insert(5, f"{listed_image(scratch).rpartition('_')[0]},3,1 10")
    write_lines(path, lines)
    return {"line": 6}


def duplicate_line_2(lines: list[str]) -> dict[str, object]:
    image, class_id, _ = lines[1].split(",")
    lines.append(lines[1])
    return {"image": image, "class_id": class_id, "line": len(lines)}


def write_file(name: str, content: bytes) -> Breaker:
    def breaks(repo: Path, scratch: Path) -> None:
        replace(
            dataset(scratch) / name if not name.startswith(("data/", "models/")) else repo / name, content
        )

    return breaks


def remove_dataset_file(name: str) -> Breaker:
    def breaks(repo: Path, scratch: Path) -> None:
        (dataset(scratch) / name).unlink()

    return breaks


def params_without(section: str, key: str) -> Breaker:
    def breaks(repo: Path, scratch: Path) -> None:
        params = yaml.safe_load((repo / "params.yaml").read_text())
        del params[section][key]
        replace(repo / "params.yaml", yaml.safe_dump(params, sort_keys=False))

    return breaks


def params_text(text: str) -> Breaker:
    def breaks(repo: Path, scratch: Path) -> None:
        replace(repo / "params.yaml", text)

    return breaks


def checkpoint_bytes(cut: Callable[[bytes], bytes]) -> Breaker:
    def breaks(repo: Path, scratch: Path) -> None:
        path = repo / CHECKPOINT
        replace(path, cut(path.read_bytes()))

    return breaks


def checkpoint_of_another_backbone(repo: Path, scratch: Path) -> None:
    """The checkpoint's config says resnet34 while its weights are resnet18's (a backbone changed after
    training, as a hand-copied file may have): torch.save's zip with the pickled config edited."""
    path = repo / CHECKPOINT
    with zipfile.ZipFile(path) as source:
        entries = [(info, source.read(info)) for info in source.infolist()]
    path.unlink()  # hard-linked to the built repository's
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as target:
        for info, content in entries:
            if info.filename.endswith("/data.pkl"):
                assert b"resnet18" in content
                content = content.replace(b"resnet18", b"resnet34")
            target.writestr(info, content)


def classifier_checkpoint_as_weights(repo: Path, scratch: Path) -> None:
    shutil.copy(repo / CHECKPOINT, repo / "models/resnet18_classifier.pt")


def csv_cell(name: str, line: int, column: str, value: str) -> Breaker:
    """Set one cell of a repository CSV (data/..., written by an earlier stage)."""

    def breaks(repo: Path, scratch: Path) -> None:
        path = repo / name
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
        table.loc[line - 2, column] = value
        replace(path, table.to_csv(index=False))

    return breaks


def csv_without_column(name: str, column: str) -> Breaker:
    def breaks(repo: Path, scratch: Path) -> None:
        path = repo / name
        replace(
            path,
            pd.read_csv(path, dtype=str, keep_default_na=False).drop(columns=[column]).to_csv(index=False),
        )

    return breaks


def json_value(name: str, key: str, value: object) -> Breaker:
    def breaks(repo: Path, scratch: Path) -> None:
        path = repo / name
        content = json.loads(path.read_text())
        content[key] = value
        replace(path, json.dumps(content))

    return breaks


def grayscale_and_four_channel(repo: Path, scratch: Path) -> dict[str, object]:
    return {
        "grayscale": grayscale_jpeg(repo, scratch)["image"],
        "rgba": four_channel_png(repo, scratch)["image"],
    }


def both_scored(repo: Path, fields: dict[str, object]) -> None:
    """Not only their headers: the model stage decoded both images and scored them."""
    scores = pd.read_csv(repo / TRAIN_SCORES).set_index("ImageId")["allMissing"]
    assert scores[[str(fields["grayscale"]), str(fields["rgba"])]].between(0, 1).all()


# --- the catalogue -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    stage: str
    # A part of the one stderr line: {data} is the dataset copy, {scratch} the case's folder, other fields
    # come from the breaker.
    expect: str
    breaks: Breaker = nothing
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    outcome: str = "error"  # error | warning | ok
    env: dict[str, str] = field(default_factory=dict)  # {scratch} is the case's folder
    size_limit: int | None = None  # bytes a file may grow to: a disk that fills up
    then: str | None = None  # a stage run next, which must succeed
    check: Callable[[Path, dict[str, object]], None] | None = None  # (repository, fields) after the run


RLE = "{data}/train.csv: line 2: bad RLE for image {image} class {class_id}: "
UNREACHABLE = {
    # Every request through a proxy that refuses at once: never a real connection; and no cached weights.
    "HTTPS_PROXY": "http://127.0.0.1:9",
    "HTTP_PROXY": "http://127.0.0.1:9",
    "https_proxy": "http://127.0.0.1:9",
    "http_proxy": "http://127.0.0.1:9",
    "NO_PROXY": "",
    "no_proxy": "",
    "TORCH_HOME": "{scratch}/torch",
    "HF_HOME": "{scratch}/hf",
    "XDG_CACHE_HOME": "{scratch}/cache",
}
OFFLINE = {**UNREACHABLE, "HF_HUB_OFFLINE": "1"}

CASES = {
    # images
    "truncated JPEG": Case(
        "prepare",
        "{data}/train_images/{image}: truncated or corrupt image (a JPEG file ends with the FFD9 "
        "end-of-image marker, this one does not); copy the file again",
        image_cut_in_half(".jpg"),
    ),
    "truncated PNG": Case(
        "prepare",
        "{data}/train_images/{image}: truncated or corrupt image (a PNG file ends with the IEND chunk",
        image_cut_in_half(".png"),
    ),
    "corrupt image": Case(
        "prepare",
        "{data}/train_images/{image}: unreadable image (",
        image_bytes(b"\xff\xd8\xff\xe0 not a JPEG after all" * 20),
    ),
    "zero-byte image": Case("prepare", "{data}/train_images/{image}: unreadable image", image_bytes(b"")),
    "train image of another size": Case(
        "prepare",
        "{data}/train_images/{image}: image of 80x400 pixels (height x width) but the dataset's images are "
        "64x400; replace it, or set prepare.image_sizes: mixed to allow images of different sizes",
        image_of_size("train_images", 80, 400),
    ),
    "test image of another size": Case(
        "prepare",
        "{data}/test_images/{image}: image of 64x384 pixels (height x width) but the dataset's images are "
        "64x400",
        image_of_size("test_images", 64, 384),
    ),
    "mixed sizes allowed (must work)": Case(
        "prepare", "", image_of_size("train_images", 80, 400), {"prepare": {"image_sizes": "mixed"}}, "ok"
    ),
    "grayscale JPEG (must work)": Case("prepare", "", grayscale_jpeg, outcome="ok"),
    "4-channel PNG (must work)": Case("prepare", "", four_channel_png, outcome="ok"),
    "grayscale and 4-channel through the model (must work)": Case(
        "prepare", "", grayscale_and_four_channel, outcome="ok", then="score_train", check=both_scored
    ),
    "listed in train.csv, missing": Case(
        "prepare",
        "{data}/train.csv: line 2: image {image} is missing from {data}/train_images",
        listed_image_missing,
    ),
    "listed in the sample, missing": Case(
        "prepare",
        "{data}/sample_submission.csv: line {line}: image {image} is missing from {data}/test_images",
        sample_image_missing,
    ),
    "train image not listed, old format (warning)": Case(
        "prepare",
        "{data}/train_images/{image}: not listed in {data}/train.csv, treated as clean (and 1 more)",
        unlisted_in_old_format,
        outcome="warning",
    ),
    "train image not listed, new format (must work)": Case(
        "prepare", "", extra_image("train_images"), outcome="ok"
    ),
    "test image not in the sample (warning)": Case(
        "prepare",
        "{data}/test_images/zzz_extra.jpg: not listed in {data}/sample_submission.csv, not predicted",
        extra_image("test_images"),
        outcome="warning",
    ),
    "empty test folder": Case(
        "prepare",
        "{data}/test_images: no test images ({data}/sample_submission.csv lists 8); "
        "copy the test images there",
        empty_test_folder,
    ),
    # CSVs
    "unknown train.csv columns": Case(
        "prepare",
        "{data}/train.csv: unknown CSV columns ['ImageId', 'Class', 'EncodedPixels']; expected",
        header("ImageId,Class,EncodedPixels"),
    ),
    "missing train.csv column": Case(
        "prepare",
        "{data}/train.csv: unknown CSV columns ['ImageId', 'EncodedPixels']; expected",
        train_csv_edit(drop_class_column),
    ),
    "unknown sample columns": Case(
        "prepare",
        "{data}/sample_submission.csv: unknown CSV columns ['ImageId', 'Pixels', 'ClassId']",
        header("ImageId,Pixels,ClassId", "sample_submission.csv"),
    ),
    "old row in a new-format file": Case(
        "prepare",
        "{data}/train.csv: line {line}: '{image}_3' is an old-format key (<image>_<class>) in a new-format "
        "file (ImageId,ClassId,EncodedPixels); use one format for the whole file",
        train_csv_edit(old_row_in_new_file),
    ),
    "new row in an old-format file": Case(
        "prepare",
        "{data}/train.csv: not a readable CSV (Error tokenizing data. C error: Expected 2 fields in line "
        "{line}, saw 3)",
        new_row_in_old_file,
    ),
    "duplicate pair": Case(
        "prepare",
        "{data}/train.csv: line {line}: duplicate row for image {image} class {class_id} (first at line 2)",
        train_csv_edit(duplicate_line_2),
    ),
    "ClassId above K": Case(
        "prepare", "{data}/train.csv: line 2: unknown ClassId 5 (classes are 1..4)", set_line_2(class_id="5")
    ),
    "ClassId 0": Case(
        "prepare", "{data}/train.csv: line 2: unknown ClassId 0 (classes are 1..4)", set_line_2(class_id="0")
    ),
    "non-integer ClassId": Case(
        "prepare", "{data}/train.csv: line 2: unknown ClassId '3.5'", set_line_2(class_id="3.5")
    ),
    "empty train.csv": Case(
        "prepare",
        "{data}/train.csv: not a readable CSV (No columns to parse from file)",
        write_file("train.csv", b""),
    ),
    "train.csv missing": Case("prepare", "{data}/train.csv: not found", remove_dataset_file("train.csv")),
    # run-length encodings
    "RLE odd token count": Case(
        "prepare",
        RLE + "RLE has an odd number of tokens (3): it must be 'start length' pairs",
        set_line_2(rle="1 2 3"),
    ),
    "RLE non-integer token": Case("prepare", RLE + "RLE has a non-integer token 'x'", set_line_2(rle="5 x")),
    "RLE decimal token": Case("prepare", RLE + "RLE has a non-integer token '2.5'", set_line_2(rle="5 2.5")),
    "RLE start 0": Case(
        "prepare", RLE + "RLE start 0 is below 1 (pixels are numbered from 1)", set_line_2(rle="0 4")
    ),
    "RLE negative start": Case("prepare", RLE + "RLE start -3 is below 1", set_line_2(rle="-3 4")),
    "RLE length 0": Case("prepare", RLE + "RLE length 0 is below 1", set_line_2(rle="5 0")),
    "RLE negative length": Case("prepare", RLE + "RLE length -2 is below 1", set_line_2(rle="5 -2")),
    "RLE unsorted runs": Case(
        "prepare",
        RLE + "RLE runs are unsorted: run '3 1' starts inside or before the previous one",
        set_line_2(rle="10 2 3 1"),
    ),
    "RLE overlapping runs": Case(
        "prepare", RLE + "RLE runs are overlapping: run '12 1'", set_line_2(rle="10 5 12 1")
    ),
    "RLE run past the image": Case(
        "prepare",
        RLE + f"RLE run '{HEIGHT * WIDTH} 2' ends at pixel {HEIGHT * WIDTH + 1}, past the image's "
        f"{HEIGHT * WIDTH} pixels",
        set_line_2(rle=f"{HEIGHT * WIDTH} 2"),
    ),
    # params
    "misspelt params key": Case(
        "prepare",
        "params: prepare.n_fold is not a known parameter (known: n_folds, seed, image_sizes)",
        params={"prepare": {"n_fold": 5}},
    ),
    "params key of the wrong type": Case(
        "prepare",
        "params: prepare.n_folds must be an integer, got 'five'",
        params={"prepare": {"n_folds": "five"}},
    ),
    "params value out of range": Case(
        "prepare",
        "params: prepare.n_folds must be at least 2 (one fold is held out), got 1",
        params={"prepare": {"n_folds": 1}},
    ),
    "params choice unknown": Case(
        "prepare",
        "params: prepare.image_sizes must be one of uniform, mixed, got 'same'",
        params={"prepare": {"image_sizes": "same"}},
    ),
    "params key missing": Case(
        "prepare", "params: prepare.seed is missing", params_without("prepare", "seed")
    ),
    "params.yaml not YAML": Case(
        "prepare",
        "params.yaml: line 2, column 1: not valid YAML (expected ',' or ']', but got '<stream end>')",
        params_text("prepare: [n_folds: 5\n"),
    ),
    "data.root not found": Case(
        "prepare",
        "{scratch}/nowhere: dataset folder not found (set data.root in params.yaml)",
        params={"data": {"root": "{scratch}/nowhere"}},
    ),
    # models
    "unknown encoder": Case(
        "classifier",
        "params: classifier.backbone 'resnet19' is not supported (choose from densenet121, resnet18",
        params={"classifier": {"backbone": "resnet19"}},
    ),
    "missing weights file": Case(
        "classifier",
        "params: classifier.encoder_weights: weights file 'weights/resnet18.pth' not found "
        "(use none, imagenet or a path to a file)",
        params={"classifier": {"encoder_weights": "weights/resnet18.pth"}},
    ),
    "weights file of another architecture": Case(
        "classifier",
        "params: classifier.encoder_weights: models/resnet18_classifier.pt: weights do not fit the "
        "mobilenet_v2 encoder (",
        classifier_checkpoint_as_weights,
        {"classifier": {"backbone": "mobilenet_v2", "encoder_weights": "models/resnet18_classifier.pt"}},
    ),
    "imagenet weights offline": Case(
        "classifier",
        "params: classifier.encoder_weights 'imagenet': could not download the pretrained weights (",
        params={"classifier": {"encoder_weights": "imagenet"}},
        env=OFFLINE,
    ),
    "imagenet weights, hub unreachable": Case(  # a new user offline: no HF_HUB_OFFLINE, no retries either
        "classifier",
        "params: classifier.encoder_weights 'imagenet': could not download the pretrained weights "
        "(https://huggingface.co: ConnectError: [Errno 111] Connection refused); download them once and set "
        "classifier.encoder_weights to the local file, or use none",
        params={"classifier": {"encoder_weights": "imagenet"}},
        env=UNREACHABLE,
    ),
    "device cuda without CUDA": Case(
        "score_train",
        "params: score_train.device is 'cuda' but no CUDA device is available; use auto or cpu",
        params={"score_train": {"device": "cuda"}},
    ),
    "corrupt checkpoint": Case(
        "score_train",
        f"{CHECKPOINT}: not a readable checkpoint, truncated or corrupt "
        "(UnpicklingError: Weights only load failed)",
        checkpoint_bytes(lambda content: b"\x80\x02 garbage, not a checkpoint " * 40),
    ),
    "truncated checkpoint": Case(
        "score_train",
        f"{CHECKPOINT}: not a readable checkpoint, truncated or corrupt (RuntimeError: PytorchStreamReader "
        "failed reading zip archive",
        checkpoint_bytes(lambda content: content[: len(content) // 2]),
    ),
    "checkpoint of another architecture": Case(
        "score_train",
        f"{CHECKPOINT}: not a classifier checkpoint, or one whose weights do not fit its config (",
        checkpoint_of_another_backbone,
    ),
    # the classifier's scores and the chosen threshold
    "NaN allMissing": Case(
        "threshold",
        f"{TRAIN_SCORES}: line 3: allMissing 'nan' is not a probability in [0, 1]; "
        "rerun `dvc repro score_train`",
        csv_cell(TRAIN_SCORES, 3, "allMissing", "nan"),
    ),
    "infinite allMissing": Case(
        "threshold",
        f"{TRAIN_SCORES}: line 4: allMissing 'inf' is not a probability in [0, 1]",
        csv_cell(TRAIN_SCORES, 4, "allMissing", "inf"),
    ),
    "allMissing above 1": Case(
        "threshold",
        f"{TRAIN_SCORES}: line 2: allMissing '1.5' is not a probability in [0, 1]",
        csv_cell(TRAIN_SCORES, 2, "allMissing", "1.5"),
    ),
    "score column missing": Case(
        "threshold",
        f"{TRAIN_SCORES}: no column out_of_fold (columns: ImageId, allMissing, has_defect, fold); rerun",
        csv_without_column(TRAIN_SCORES, "out_of_fold"),
    ),
    "scores of an unknown image": Case(
        "threshold",
        f"{TRAIN_SCORES}: line 2: image zzz.jpg is not a prepared train image",
        csv_cell(TRAIN_SCORES, 2, "ImageId", "zzz.jpg"),
    ),
    "NaN allMissing of a test image": Case(
        "postprocess",
        "data/test_missing_count.csv: line 2: allMissing 'nan' is not a probability in [0, 1]; rerun "
        "`dvc repro classifier`",
        csv_cell("data/test_missing_count.csv", 2, "allMissing", "nan"),
    ),
    "threshold param outside [0, 1]": Case(
        "postprocess",
        "params: postprocess.threshold must be in [0, 1], got 1.5",
        params={"postprocess": {"threshold": 1.5}},
    ),
    "threshold.json outside [0, 1]": Case(
        "postprocess",
        "data/threshold.json: threshold 1.7 is not a number in [0, 1]; rerun `dvc repro threshold`",
        json_value("data/threshold.json", "threshold", 1.7),
    ),
    "threshold.json not JSON": Case(
        "postprocess",
        "data/threshold.json: not readable JSON (",
        write_file("data/threshold.json", b'{"threshold": '),
    ),
    # the disk
    "disk full while writing": Case(
        "threshold", "data/threshold.json: cannot write (File too large)", size_limit=512
    ),
}


@dataclass(frozen=True)
class Outcome:
    """What a case's stage command did, and its outputs before and after."""

    results: list[subprocess.CompletedProcess[str]]  # the stage's, then `then`'s
    expected: str
    fields: dict[str, object]
    before: dict[str, str]
    after: dict[str, str]
    temporary: list[str]
    repo: Path


def run_case(built: Path, name: str, scratch: Path) -> Outcome:
    case = CASES[name]
    repo = clone(built, scratch / "repo")
    params = {
        section: {key: value.format(scratch=scratch) if isinstance(value, str) else value
                  for key, value in values.items()}
        for section, values in case.params.items()
    }  # fmt: skip
    if case.stage == "prepare":
        shutil.copytree(built / DATASET, dataset(scratch))
        params = {"data": {"root": str(dataset(scratch))}, **params}
    set_params(repo, params)
    fields = case.breaks(repo, scratch) or {}
    before = digests(repo, case.stage)
    env = {key: value.format(scratch=scratch) for key, value in case.env.items()}
    results = [run_stage(repo, case.stage, env, case.size_limit)]
    if case.then and results[0].returncode == 0:
        results.append(run_stage(repo, case.then, env))
    expected = case.expect.format(data=dataset(scratch), scratch=scratch, **fields)
    return Outcome(results, expected, fields, before, digests(repo, case.stage), temporary_files(repo), repo)


@pytest.fixture(scope="module")
def outcomes(
    request: pytest.FixtureRequest, built: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Outcome | BaseException]:
    """Every selected case, run two at a time: each in its own copy, and the stage commands, mostly
    interpreter start-up and imports, keep one core each busy (the slow model stages first). The cases with
    a file size limit run last, alone: preexec_fn is not safe while other threads run."""
    selected = [
        item.callspec.params["name"]
        for item in request.session.items
        if item.module is request.module and hasattr(item, "callspec")
    ]
    order = sorted(dict.fromkeys(selected), key=lambda name: CASES[name].stage == "prepare")
    scratch = tmp_path_factory.mktemp("cases")
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        futures = {
            name: pool.submit(run_case, built, name, scratch / f"case{n}")
            for n, name in enumerate(order)
            if CASES[name].size_limit is None
        }
    # A case that could not even run fails its own test, not the others'.
    found: dict[str, Outcome | BaseException] = {
        name: future.exception() or future.result() for name, future in futures.items()
    }
    for n, name in enumerate(order):
        if CASES[name].size_limit is not None:
            try:
                found[name] = run_case(built, name, scratch / f"case{n}")
            except Exception as error:
                found[name] = error
    return found


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(outcomes: dict[str, Outcome | BaseException], name: str) -> None:
    case, outcome = CASES[name], outcomes[name]
    if isinstance(outcome, BaseException):
        raise outcome
    result = outcome.results[0]
    lines = result.stderr.splitlines()
    print(f"CATALOGUE | {name} | {case.stage} | {' / '.join(lines) or '(nothing)'}")
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    if case.outcome == "error":
        assert result.returncode == 1, result.stdout + result.stderr
        assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
        assert outcome.expected in lines[0]
        assert outcome.after == outcome.before  # the previous outputs, untouched
    elif case.outcome == "warning":
        assert result.returncode == 0, result.stderr
        assert lines == [f"warning: {outcome.expected}"]
    else:
        assert result.returncode == 0, result.stderr
        assert lines == []
    assert outcome.temporary == []
    for later in outcome.results[1:]:
        assert later.returncode == 0 and "Traceback" not in later.stderr, later.stderr
    if case.check is not None:
        case.check(outcome.repo, outcome.fields)

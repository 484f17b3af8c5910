"""Several processes per stage (torchrun + DistributedDataParallel), on CPU with gloo: the pure sharding
helpers, and a tiny DAG whose classifier, score_train and segment each run in 2 processes through `dvc
repro` (the stages relaunch themselves under torchrun; nothing is forked inside pytest)."""

from __future__ import annotations

import itertools
import re
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import WeightedRandomSampler

from stages.classifier import ClassifierParams
from stages.core.device import resolve_runtime
from stages.core.distributed import (
    Group,
    RankSlice,
    augment_seed,
    chunks,
    epoch_slice,
    failure_report,
    group_from_env,
    interleave,
    ordered_by_id,
    state_digest,
    strided,
)
from stages.core.errors import PipelineError
from stages.core.inference import classifier_probabilities
from stages.core.models import load_classifier
from stages.core.params import from_mapping
from stages.core.prepared import load_prepared
from stages.core.training import make_loader
from stages.score_train import ScoreTrainParams
from stages.segment import SegmentParams
from tests.dvc_repo import REPO, copy_repo, run

# --- the pure helpers -------------------------------------------------------------------------------


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_strided_shards_are_disjoint_complete_and_unpadded(world: int) -> None:
    for n in range(0, 11):
        shards = [strided(n, rank, world) for rank in range(world)]
        assert sorted(np.concatenate(shards).tolist()) == list(range(n))
        assert max(map(len, shards)) - min(map(len, shards)) <= 1
        assert np.array_equal(interleave(shards), np.arange(n))  # the inverse puts them back in order


def test_ordered_by_id_restores_the_table_order() -> None:
    ids = [f"{i}.jpg" for i in range(7)]
    parts = [[(ids[i], i * 10) for i in strided(7, rank, 3)] for rank in range(3)]
    assert ordered_by_id(ids, parts) == [i * 10 for i in range(7)]
    with pytest.raises(PipelineError, match="predicted by two processes"):
        ordered_by_id(ids, [*parts, [(ids[0], 0)]])
    with pytest.raises(PipelineError, match=r"missing \['5.jpg'\], unexpected \[\]"):
        ordered_by_id(ids, [parts[0], parts[1], parts[2][:-1]])
    with pytest.raises(PipelineError, match=r"missing \[\], unexpected \['x.jpg'\]"):
        ordered_by_id(ids, [*parts, [("x.jpg", 0)]])


@pytest.mark.parametrize(("n", "world", "chunk"), [(0, 2, 4), (9, 2, 2), (10, 3, 1), (17, 4, 3), (5, 8, 2)])
def test_chunks_take_the_next_images_of_each_ranks_shard(n: int, world: int, chunk: int) -> None:
    ids = [f"{i}.jpg" for i in range(n)]
    taken: list[list[str]] = [[] for _ in range(world)]
    covered = []
    for part, counts in chunks(ids, world, chunk):
        covered.extend(part)
        assert len(part) <= chunk * world and sum(counts) == len(part)
        for rank in range(world):
            taken[rank].extend(part[rank::world])  # chunks start at a rank-0 image
            assert len(part[rank::world]) == counts[rank]
    assert covered == ids
    assert taken == [[ids[i] for i in strided(n, rank, world)] for rank in range(world)]


def test_group_in_order_passes_results_through_in_one_process() -> None:
    pairs = [("a", 1), ("b", 2)]
    assert list(Group().in_order(iter(pairs), ["a", "b"], chunk=1)) == pairs
    assert Group().shard(pd.DataFrame({"x": [1, 2, 3]}))["x"].tolist() == [1, 2, 3]


def test_epoch_slice_gives_every_rank_as_many_disjoint_draws() -> None:
    draws = list(range(100, 111))  # 11 draws, 3 ranks: the last 2 are cut
    slices = [epoch_slice(draws, rank, 3) for rank in range(3)]
    assert [len(part) for part in slices] == [3, 3, 3]
    assert sorted(itertools.chain(*slices)) == draws[:9]


def test_rank_slices_share_the_weighted_draws_of_one_process() -> None:
    """Every rank draws the epoch's list with the same seeded generator and takes its slice: together the
    ranks see the single-process draws (class-balanced weights, images_per_epoch), epoch after epoch."""
    weights = np.array([0.5, 0.1, 0.1, 0.3])

    def sampler() -> WeightedRandomSampler:
        generator = torch.Generator().manual_seed(7)
        return WeightedRandomSampler(weights.tolist(), 10, replacement=True, generator=generator)

    single, ranks = sampler(), [RankSlice(sampler(), rank, 2) for rank in range(2)]
    for _ in range(3):  # epochs: each pass draws anew
        draws = list(single)
        assert [list(part) for part in ranks] == [draws[0::2], draws[1::2]]
        assert all(len(part) == 5 for part in ranks)


@pytest.mark.parametrize("images_per_epoch", [None, 9])
def test_make_loader_shards_the_single_process_draws(images_per_epoch: int | None) -> None:
    class Indexed(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 8

        def __getitem__(self, index: int) -> int:
            return index

    def drawn(group: Group) -> list[int]:
        loader = make_loader(Indexed(), 2, 0, shuffle=True, seed=3, samples=images_per_epoch, group=group)
        return [int(i) for batch in loader for i in batch]

    single = drawn(Group())
    usable = len(single) - len(single) % 2
    assert [drawn(Group(rank=rank, world=2)) for rank in range(2)] == [single[0:usable:2], single[1:usable:2]]


def test_augmentation_seeds_differ_between_ranks() -> None:
    assert augment_seed(42, 0) == 42  # rank 0 augments as one process does
    assert len({augment_seed(42, rank) for rank in range(8)}) == 8


def test_state_digest_sees_any_change() -> None:
    state = {"w": torch.ones(3), "n": torch.tensor(5)}
    digest = state_digest(state)
    assert digest == state_digest({"n": torch.tensor(5), "w": torch.ones(3)})
    assert digest != state_digest({**state, "w": torch.tensor([1.0, 1.0, 1.0 + 1e-7])})
    assert digest != state_digest({**state, "n": torch.tensor(5.0)})


def test_group_from_env() -> None:
    assert group_from_env({}) == Group()
    env = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
    assert group_from_env(env) == Group(rank=3, world=4, local_rank=1, local_world=2)
    with pytest.raises(PipelineError, match="environment: RANK must be an integer"):
        group_from_env({**env, "RANK": "x"})


@pytest.mark.parametrize(
    ("cls", "section"),
    [(ClassifierParams, "classifier"), (ScoreTrainParams, "score_train"), (SegmentParams, "segment")],
)
def test_nproc_per_node_is_a_positive_integer(cls: type, section: str) -> None:
    assert from_mapping(cls, {}, section).nproc_per_node == 1
    with pytest.raises(PipelineError, match=rf"^params: {section}.nproc_per_node must be at least 1, got 0$"):
        from_mapping(cls, {"nproc_per_node": 0}, section)
    with pytest.raises(PipelineError, match=rf"^params: {section}.nproc_per_node must be an integer"):
        from_mapping(cls, {"nproc_per_node": 1.5}, section)


def test_failure_report_shows_each_error_once() -> None:
    crash = {"rank": 0, "time": 2.0, "kind": "crash", "text": "Traceback ...\nRuntimeError: closed by peer\n"}
    errors = [
        {"rank": 1, "time": 1.0, "kind": "error", "text": "error: a.jpg: unreadable image"},
        {"rank": 2, "time": 1.5, "kind": "error", "text": "error: a.jpg: unreadable image"},
    ]
    assert failure_report([*errors, crash], "fallback") == "error: a.jpg: unreadable image"
    assert failure_report([crash], "fallback").endswith("(rank 0; the other processes stopped with it)")
    assert (
        failure_report([], "error: m: rank 1 was killed by SIGKILL")
        == "error: m: rank 1 was killed by SIGKILL"
    )


# --- a tiny DAG in 2 processes per model stage --------------------------------------------------------

# Two short epochs per model on small inputs: the ranks exchange weights, metrics and resume states twice.
TRAINING = {"min_epochs": 2, "max_epochs": 2, "batch_size": 4, "folds": 1, "nproc_per_node": 2}
PARAMS = {
    "classifier": {**TRAINING, "backbone": "resnet18", "input_height": 32, "input_width": 192},
    "score_train": {"batch_size": 8, "nproc_per_node": 2},
    "segment": {
        **TRAINING,
        "input_height": 64,
        "input_width": 384,
        "crop_height": 64,
        "crop_width": 128,
        "images_per_epoch": 16,  # class-balanced draws (class_balance 0.5): the weighted sampler is sliced
        "decoder_channels": [32, 16, 16, 8, 8],
        "min_areas_px": [0, 200],
        "plot_images": 1,
    },
}


@pytest.fixture(scope="module")
def ddp_repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    repo = copy_repo(tmp_path_factory.mktemp("ddp"), PARAMS)
    return repo, run(repo, "dvc", "repro", "score_train", "segment").stdout


def read(repo: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(repo / name, dtype={"ImageId": str}, keep_default_na=False)


def first_seen(ids: pd.Series) -> list[str]:
    return list(dict.fromkeys(ids))


def test_every_image_once_in_the_order_one_process_writes(ddp_repo: tuple[Path, str]) -> None:
    repo, _ = ddp_repo
    prepared = load_prepared(repo / "data/prepared")
    train, test = prepared.train["ImageId"].tolist(), prepared.test["ImageId"].tolist()
    assert read(repo, "data/test_missing_count.csv")["ImageId"].tolist() == test
    assert read(repo, "data/train_missing_count.csv")["ImageId"].tolist() == train
    holdout = read(repo, "data/holdout_candidates.csv")
    assert (
        first_seen(holdout["ImageId"]) == prepared.train.loc[prepared.train["fold"] == 0, "ImageId"].tolist()
    )
    assert not holdout.duplicated(["ImageId", "ClassId", "threshold"]).any()
    candidates = read(repo, "data/test_candidates.csv")
    assert first_seen(candidates["ImageId"]) == [i for i in test if i in set(candidates["ImageId"])]
    assert not candidates.duplicated(["ImageId", "ClassId", "threshold"]).any()
    submission = read(repo, "data/submission_raw.csv")
    sample = read(repo, "data/synthetic/sample_submission.csv")
    assert submission[["ImageId", "ClassId"]].equals(sample[["ImageId", "ClassId"]])  # each pair once
    assert Counter(submission["ImageId"]) == dict.fromkeys(test, prepared.num_classes)


def test_the_ranks_end_with_identical_weights(ddp_repo: tuple[Path, str]) -> None:
    """Every DDP run checks it (all ranks' weight digests gathered) and rank 0 reports the digest; it is
    the digest of the weights saved."""
    repo, output = ddp_repo
    for stage, folder in (("classifier", "classifier"), ("segment", "unet")):
        line = re.search(
            rf"^{stage} fold 0: weights identical on all 2 processes \(sha256 (\w+)\)$", output, re.M
        )
        assert line is not None, output[-3000:]
        saved = torch.load(repo / f"models/{folder}/fold_0.pt", map_location="cpu", weights_only=True)
        assert state_digest(saved["state_dict"])[:16] == line.group(1)


def test_only_rank_0_logs_and_writes(ddp_repo: tuple[Path, str]) -> None:
    repo, output = ddp_repo
    for stage in ("classifier", "segment"):
        for epoch in (1, 2):
            assert output.count(f"{stage} fold 0 epoch {epoch}:") == 1
        steps = pd.read_csv(repo / f"data/live/{stage}/plots/metrics/fold_0/loss.tsv", sep="\t")["step"]
        assert steps.tolist() == [1, 2]
        assert (repo / f"data/{stage}_metrics.json").read_text().count('"processes": 2') == 1
    assert not [path for path in repo.glob("[dm]*/**/.*.tmp")]  # no other rank's half-written outputs
    assert not (repo / ".resume").exists()  # rank 0 removed the resume states at the end


def test_scores_equal_one_process(ddp_repo: tuple[Path, str]) -> None:
    """score_train's 2 processes give the scores one process gives (float noise: other batches)."""
    repo, _ = ddp_repo
    prepared = load_prepared(repo / "data/prepared")
    model, checkpoint = load_classifier(repo / "models/classifier/fold_0.pt")
    rows = prepared.train[prepared.train["fold"] == checkpoint["val_fold"]]
    size = tuple(checkpoint["config"]["input_size"])
    single = classifier_probabilities(
        [model], rows, repo / "data/synthetic/train_images", size, resolve_runtime("cpu", False), 8
    )
    scores = read(repo, "data/train_missing_count.csv").set_index("ImageId")
    np.testing.assert_allclose(scores.loc[rows["ImageId"], "allMissing"], single[:, 0], atol=1e-5)


def test_a_failing_rank_is_reported_once() -> None:
    """Rank 1 stops with its one-line error and rank 0 loses its peer in a collective: the launch shows the
    error line once, without a traceback, and exits with 1 (tests/ddp_worker.py, a light stand-in stage)."""
    launch = "import sys; from stages.core.distributed import launch; sys.exit(launch('tests.ddp_worker', 2))"
    result = run(REPO, sys.executable, "-c", launch, check=False)
    assert result.returncode == 1
    assert result.stderr.strip() == "error: data/synthetic/train_images/0a1b2c3d4.jpg: unreadable image"

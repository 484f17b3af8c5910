"""The training loop shared by the classifier and segmentation stages.

Early stopping on validation loss (at least min_epochs, at most max_epochs, stop after `patience` epochs
without improvement), the best checkpoint kept (not the last), a progress bar over batches, one log
line per epoch and dvclive curves per fold. Under torchrun (stages.core.distributed) each rank trains on
its share of every epoch's draws and validates on its share of the images; the metrics are reduced over
the ranks, and rank 0 alone logs and saves the resume states.
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from dvclive import Live
from torch import nn
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler, WeightedRandomSampler
from tqdm import tqdm

from stages.core.device import Runtime
from stages.core.distributed import SINGLE, Group, RankSlice, augment_seed
from stages.core.images import AugmentParams, augmentation_rng_state, set_augmentation_rng_state
from stages.core.params import require
from stages.core.resume import ResumeStore, rng_state, set_rng_state


@dataclass(frozen=True)
class TrainParams:
    """The training options both model stages share (each in its own params.yaml section)."""

    backbone: str = "resnet18"
    encoder_weights: str = "none"  # none | imagenet | path to a local weights file
    freeze_encoder: bool = False
    input_height: int = 64
    input_width: int = 384
    batch_size: int = 16
    min_epochs: int = 1
    max_epochs: int = 10
    patience: int = 3
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    scheduler: Literal["none", "cosine", "plateau"] = "cosine"
    folds: int = 1  # fold models to train; 1 = a single train/validation split (validate on fold 0)
    seed: int = 42
    device: str = "auto"  # auto: CUDA when present, else CPU
    mixed_precision: bool = True  # autocast (bfloat16 where supported, else float16), CUDA only
    num_workers: int = 0
    # Training images drawn per epoch (reshuffled passes, so an image may be seen several times per epoch);
    # null: one pass over the training images. The training budget is max_epochs x this, in images seen,
    # so that a small dataset still gets enough optimisation steps.
    images_per_epoch: int | None = None
    # Processes (GPUs) on this node: > 1 runs the stage under torchrun with DistributedDataParallel.
    # batch_size is per process; images_per_epoch is shared out among them.
    nproc_per_node: int = 1
    augment: AugmentParams = field(default_factory=AugmentParams)

    def validate(self, section: str) -> None:
        require(self.input_height >= 32, f"{section}.input_height", "must be at least 32", self.input_height)
        require(self.input_width >= 32, f"{section}.input_width", "must be at least 32", self.input_width)
        for name in ("input_height", "input_width"):
            value = getattr(self, name)
            require(value % 32 == 0, f"{section}.{name}", "must be a multiple of 32 (encoder stride)", value)
        require(self.batch_size >= 1, f"{section}.batch_size", "must be at least 1", self.batch_size)
        require(self.min_epochs >= 1, f"{section}.min_epochs", "must be at least 1", self.min_epochs)
        require(
            self.max_epochs >= self.min_epochs,
            f"{section}.max_epochs",
            "must be >= min_epochs",
            self.max_epochs,
        )
        require(self.patience >= 1, f"{section}.patience", "must be at least 1", self.patience)
        require(self.learning_rate > 0, f"{section}.learning_rate", "must be positive", self.learning_rate)
        require(self.weight_decay >= 0, f"{section}.weight_decay", "must be >= 0", self.weight_decay)
        require(self.folds >= 1, f"{section}.folds", "must be at least 1", self.folds)
        require(self.num_workers >= 0, f"{section}.num_workers", "must be >= 0", self.num_workers)
        require(
            self.nproc_per_node >= 1, f"{section}.nproc_per_node", "must be at least 1", self.nproc_per_node
        )
        if self.images_per_epoch is not None:
            require(
                self.images_per_epoch >= 1,
                f"{section}.images_per_epoch",
                "must be at least 1 (or null: one pass)",
                self.images_per_epoch,
            )
        self.augment.validate(f"{section}.augment")

    def check_folds(self, section: str, n_folds: int) -> None:
        """The fold models to train must exist in the prepared fold table."""
        require(
            self.folds <= n_folds, f"{section}.folds", f"must be <= prepare.n_folds ({n_folds})", self.folds
        )

    @property
    def input_size(self) -> tuple[int, int]:
        return self.input_height, self.input_width


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def class_balance_weights(table: pd.DataFrame, num_classes: int, balance: float) -> np.ndarray:
    """Sampling weight per row (summing to 1) that draws the defect classes, and clean images as one more
    class, with probability proportional to count**(1 - balance): balance 0 draws images uniformly (each
    class as often as it occurs), 1 draws every class equally often, however rare. An image is drawn
    through any class it has, so multi-class images count for each of their classes."""
    present = np.stack(
        [table[f"rle_{k}"].ne("").to_numpy() for k in range(1, num_classes + 1)]
        + [~table["has_defect"].astype(bool).to_numpy()],
        axis=1,
    )  # (N, K + 1): classes 1..K, then "clean"
    counts = present.sum(axis=0).astype(np.float64)
    share = np.where(counts > 0, counts ** (1.0 - balance), 0.0)
    per_image_of_class = np.divide(share / share.sum(), counts, out=np.zeros_like(counts), where=counts > 0)
    weights = present @ per_image_of_class
    return weights / weights.sum()


def make_loader(
    dataset: Dataset,
    batch_size: int,
    num_workers: int,
    shuffle: bool = False,
    seed: int = 0,
    samples: int | None = None,
    weights: np.ndarray | None = None,
    group: Group = SINGLE,
) -> DataLoader:
    """A loader in dataset order, or shuffled; `samples` (with shuffle) draws that many items per pass
    over the loader, as consecutive random permutations of the dataset (no item twice before all once);
    `weights` (with shuffle) draws `samples` items (default: the dataset's size) with replacement, item i
    with probability weights[i]. Shuffled, with several processes in `group`: each pass's draws are made
    once with the shared seed and each rank takes its strided slice of them."""
    generator = torch.Generator().manual_seed(seed)
    sampler: Sampler | None = None
    if shuffle and weights is not None:
        draws = samples if samples is not None else len(dataset)
        sampler = WeightedRandomSampler(weights.tolist(), draws, replacement=True, generator=generator)
    elif shuffle and samples is not None:
        sampler = RandomSampler(dataset, replacement=False, num_samples=samples, generator=generator)
    if shuffle and group.distributed:
        # The sampler DataLoader(shuffle=True) would make, made here to be sliced.
        sampler = RankSlice(sampler or RandomSampler(dataset, generator=generator), group.rank, group.world)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle if sampler is None else None,
        sampler=sampler,
        num_workers=num_workers,
        generator=generator,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=num_workers > 0,
        drop_last=False,
    )


def make_optimizer(params: TrainParams, model: nn.Module) -> torch.optim.Optimizer:
    trainable = [p for p in model.parameters() if p.requires_grad]
    if params.optimizer == "sgd":
        return torch.optim.SGD(
            trainable, lr=params.learning_rate, momentum=0.9, weight_decay=params.weight_decay, nesterov=True
        )
    factory = torch.optim.AdamW if params.optimizer == "adamw" else torch.optim.Adam
    return factory(trainable, lr=params.learning_rate, weight_decay=params.weight_decay)


def make_scheduler(params: TrainParams, optimizer: torch.optim.Optimizer) -> Any:
    if params.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=params.max_epochs)
    if params.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=1)
    return None


@dataclass
class FitResult:
    best_state: dict[str, torch.Tensor]
    best_epoch: int  # 1-based
    best_metrics: dict[str, float]  # validation metrics of the best epoch ("loss" included)
    epochs_run: int
    train_seconds: float
    train_images: int  # images seen in training, all epochs

    @property
    def images_per_second(self) -> float:
        return self.train_images / self.train_seconds if self.train_seconds else 0.0


Evaluate = Callable[[nn.Module, DataLoader], dict[str, float]]


@dataclass(frozen=True)
class FoldResume:
    """Where fit() saves, after every epoch, and finds the state of one fold."""

    store: ResumeStore
    fold: int


def fit(
    model: nn.Module,
    train_loader: DataLoader,
    val_loader: DataLoader,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    evaluate: Evaluate,
    params: TrainParams,
    runtime: Runtime,
    log_epoch: Callable[[int, dict[str, float]], None],
    name: str,
    resume: FoldResume | None = None,
) -> FitResult:
    """Train with early stopping on validation loss; return the best epoch's weights and metrics. With
    `resume`, the state is saved after every epoch, and a saved state is continued from (its logged
    epochs replayed through `log_epoch`, so the curves are whole). Under torchrun every rank calls fit()
    with its own loaders (its share of the draws and of the validation images): the model trains
    DDP-wrapped, `evaluate` reduces its metrics over the ranks, and rank 0 alone reads and writes the
    resume state (the others receive it)."""
    group = runtime.group
    optimizer = make_optimizer(params, model)
    scheduler = make_scheduler(params, optimizer)
    scaler = runtime.grad_scaler()
    best: FitResult | None = None
    stale_epochs, train_seconds, train_images = 0, 0.0, 0
    history: list[tuple[int, dict[str, float]]] = []
    first_epoch = 1
    augment = getattr(train_loader.dataset, "augment", None)  # albumentations: its own random generators
    saved = resume.store.load(resume.fold) if resume is not None and group.is_main else None
    if resume is not None and group.distributed:
        saved = group.broadcast(saved)  # rank 0's state: the file may be on another node
    if saved is not None:
        history = [(int(epoch), dict(metrics)) for epoch, metrics in saved["history"]]
        for epoch, metrics in history:
            log_epoch(epoch, metrics)
        best = FitResult(saved["best_state"], saved["best_epoch"], saved["best_metrics"], 0, 0.0, 0)
        stale_epochs, train_seconds = saved["stale_epochs"], saved["train_seconds"]
        train_images, epoch = saved["train_images"], saved["epoch"]
        if group.is_main:
            print(f"{name}: resumed after epoch {epoch} from {resume.store.path(resume.fold)}", flush=True)
        if saved["finished"]:
            best.epochs_run, best.train_seconds, best.train_images = epoch, train_seconds, train_images
            return best
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(saved["scheduler"])
        scaler.load_state_dict(saved["scaler"])
        # Each rank's own random generators (the loader's is shared: the ranks slice the same draws).
        generators = saved["ranks"][group.rank] if "ranks" in saved else saved
        set_rng_state(generators["rng"])
        train_loader.generator.set_state(saved["loader_rng"])
        if augment is not None:
            set_augmentation_rng_state(augment, generators["augment_rng"])
        first_epoch = epoch + 1
    trained = group.wrap(model)  # after the restore: DDP starts every rank from rank 0's weights
    for epoch in range(first_epoch, params.max_epochs + 1):
        trained.train()
        started, total_loss, seen = time.perf_counter(), 0.0, 0
        bar = tqdm(
            train_loader,
            desc=f"{name} epoch {epoch}",
            leave=False,
            disable=None if group.is_main else True,
            unit="batch",
        )
        for images, targets in bar:
            images, targets = runtime.batch(images), runtime.tensor(targets)
            optimizer.zero_grad(set_to_none=True)
            with runtime.autocast():
                loss = loss_fn(trained(images), targets)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            total_loss += float(loss.detach()) * len(images)
            seen += len(images)
            bar.set_postfix(loss=f"{total_loss / seen:.4f}")
        train_seconds += time.perf_counter() - started
        group.sync_buffers(model)
        total_loss, seen = group.sum([total_loss, seen])  # every rank's share of the epoch
        train_images += int(seen)
        metrics = {"train_loss": total_loss / max(seen, 1), **evaluate(model, val_loader)}
        metrics["lr"] = optimizer.param_groups[0]["lr"]
        # Rank 0's metrics on every rank: early stopping, the best epoch and the plateau scheduler then
        # decide the same everywhere, bit for bit.
        metrics = group.broadcast(metrics)
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            scheduler.step(metrics["loss"])
        elif scheduler is not None:
            scheduler.step()
        improved = best is None or _better(metrics["loss"], best.best_metrics["loss"])
        if improved:
            state = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
            best = FitResult(state, epoch, metrics, epoch, 0.0, 0)
            stale_epochs = 0
        else:
            stale_epochs += 1
        metrics["best"] = float(improved)
        log_epoch(epoch, metrics)
        history.append((epoch, metrics))
        stop = epoch >= params.min_epochs and stale_epochs >= params.patience
        assert best is not None  # set in the first epoch
        if resume is not None:
            state = {
                "epoch": epoch,
                "finished": stop or epoch == params.max_epochs,
                "history": history,
                "best_state": best.best_state,
                "best_epoch": best.best_epoch,
                "best_metrics": best.best_metrics,
                "stale_epochs": stale_epochs,
                "train_seconds": train_seconds,
                "train_images": train_images,
            }
            if not state["finished"]:  # a finished fold needs its best weights only
                generators = {
                    "rng": rng_state(),
                    "augment_rng": augmentation_rng_state(augment) if augment is not None else None,
                }
                ranks = group.gather(generators) if group.distributed else None
                state |= {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict() if scheduler is not None else None,
                    "scaler": scaler.state_dict(),
                    "loader_rng": train_loader.generator.get_state(),
                    **({"ranks": ranks} if ranks is not None else generators),
                }
            if group.is_main:
                resume.store.save(resume.fold, state)
        if stop:
            break
    assert best is not None  # max_epochs >= 1
    best.epochs_run, best.train_seconds, best.train_images = epoch, train_seconds, train_images
    return best


def _better(loss: float, best_loss: float) -> bool:
    """A lower loss; a NaN loss never improves, and any real loss beats a NaN best."""
    return loss < best_loss or (math.isnan(best_loss) and not math.isnan(loss))


def format_epoch(name: str, epoch: int, metrics: dict[str, float]) -> str:
    """One readable log line per epoch."""
    parts = [f"{key}={value:.4f}" for key, value in metrics.items() if key not in ("best", "lr")]
    marker = " *best*" if metrics.get("best") else ""
    return f"{name} epoch {epoch}: " + " ".join(parts) + f" lr={metrics['lr']:.2e}{marker}"


def epoch_logger(live: Live | None, name: str, fold: int) -> Callable[[int, dict[str, float]], None]:
    """The per-epoch callback of fit(): one log line, and the fold's curves to dvclive; nothing without
    `live` (the ranks other than 0 under torchrun)."""

    def log_epoch(epoch: int, metrics: dict[str, float]) -> None:
        if live is None:
            return
        print(format_epoch(name, epoch, metrics), flush=True)
        live.step = epoch
        for key, value in metrics.items():
            live.log_metric(f"fold_{fold}/{key}", value, plot=key != "best")

    return log_epoch


@dataclass
class FoldModel:
    """One trained fold model: the weights of its best epoch, the fold it held out, the folds it saw."""

    model: nn.Module
    fold: int  # the validation (held-out) fold
    train_folds: list[int]
    result: FitResult

    def checkpoint_extra(self, params: TrainParams) -> dict[str, Any]:
        """What a checkpoint records beside the weights, so it can be traced without params.yaml."""
        return {
            "fold": self.fold,
            "val_fold": self.fold,
            "train_folds": self.train_folds,
            "best_epoch": self.result.best_epoch,
            "val_metrics": self.result.best_metrics,
            "params": asdict(params),
        }

    def metrics(self, names: tuple[str, ...]) -> dict[str, float]:
        """The fold's line in the stage's metrics: `names` are keys of the evaluate() callback."""
        result = self.result
        return {
            "best_epoch": result.best_epoch,
            "epochs_run": result.epochs_run,
            **{f"val_{name}": result.best_metrics[name] for name in names},
            "train_images_per_s": round(result.images_per_second, 2),
        }


def _all_rows(rows: pd.DataFrame) -> pd.DataFrame:
    return rows


@dataclass(frozen=True)
class FoldTask:
    """What a model stage trains on each fold; train_folds() is the loop both model stages share."""

    name: str  # log lines and dvclive keys: "<name> fold <k>"
    build_model: Callable[[], nn.Module]  # a fresh model (smp's freeze_encoder() available)
    train_set: Callable[[pd.DataFrame, int], Dataset]  # (training rows, seed) -> augmented dataset
    val_set: Callable[[pd.DataFrame], Dataset]  # validation rows -> dataset, no augmentation
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    evaluate: Evaluate
    select_train_rows: Callable[[pd.DataFrame], pd.DataFrame] = _all_rows  # e.g. defective images only
    # Sampling weights of the training rows (e.g. class_balance_weights); None: uniform.
    sample_weights: Callable[[pd.DataFrame], np.ndarray] | None = None


def train_folds(
    task: FoldTask,
    params: TrainParams,
    table: pd.DataFrame,
    runtime: Runtime,
    live: Live | None,
    store: ResumeStore | None = None,
) -> list[FoldModel]:
    """One model per fold k < params.folds: trained on the other folds' rows (as `task` selects them),
    early-stopped on fold k, returned with its best epoch's weights loaded. With `store`, every epoch's
    state is saved there and a saved state is continued from (a killed run resumes). Under torchrun every
    rank calls it (`live` and the store's files on rank 0 only) and each trains and validates on its
    share; the ranks end every fold with the same weights, which is checked."""
    group = runtime.group
    fold_models = []
    for fold in range(params.folds):
        seed = params.seed + fold
        seed_everything(seed)
        fit_rows = task.select_train_rows(table[table["fold"] != fold])
        val_rows = table[table["fold"] == fold]
        train_loader = make_loader(
            task.train_set(fit_rows, augment_seed(seed, group.rank)),
            params.batch_size,
            params.num_workers,
            shuffle=True,
            seed=seed,
            samples=params.images_per_epoch,
            weights=task.sample_weights(fit_rows) if task.sample_weights is not None else None,
            group=group,
        )
        val_loader = make_loader(task.val_set(group.shard(val_rows)), params.batch_size, params.num_workers)
        model = task.build_model()
        if params.freeze_encoder:
            model.freeze_encoder()
        model = runtime.model(model)
        name = f"{task.name} fold {fold}"
        result = fit(
            model,
            train_loader,
            val_loader,
            task.loss_fn,
            task.evaluate,
            params,
            runtime,
            epoch_logger(live, name, fold),
            name,
            FoldResume(store, fold) if store is not None else None,
        )
        if group.distributed:
            digest = group.check_identical(result.best_state, name)
            if group.is_main:
                print(f"{name}: weights identical on all {group.world} processes (sha256 {digest[:16]})")
        model.load_state_dict(result.best_state)
        train_folds_seen = sorted(int(f) for f in fit_rows["fold"].unique())
        fold_models.append(FoldModel(model, fold, train_folds_seen, result))
    return fold_models

"""The A2V training loop (paper App. A.1): 5·L_cos + L_ctr, AdamW, checkpoints, resume, validation.

Videos are split into train and validation sets by video (seeded), so no chunk of a validation
video is ever trained on. A batch is `batch_size` chunks drawn from all training videos; the
contrastive negatives of a chunk are the chunks of OTHER videos in its batch (`a2v_loss` masks
the chunks of its own video). After every epoch the validation loss and the audio-to-video
retrieval of the predictor are measured; the mean-audio reference ("orig") is measured once.

Output folder:
- model.safetensors + a2v_config.json: the predictor (`pruning.predictor_path` takes the folder),
  rewritten at every checkpoint;
- training_state.pt: predictor, optimizer, position (epoch, batch), loss history; what `resume`
  continues from. The batch order of every epoch is a pure function of (seed, epoch), so a resumed
  run takes exactly the steps the uninterrupted run would have taken.
Both are replaced whole (write, then rename), so an interruption leaves the previous checkpoint.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from rich.progress import Progress

from streamguard.pruning.a2v import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    A2VConfig,
    A2VPredictor,
    PredictorMismatchError,
    a2v_loss,
    backbone_name,
    mean_audio_reference,
    save_predictor,
)
from streamguard.train import atomic
from streamguard.train.features import VideoFeatures
from streamguard.train.options import TrainOptions
from streamguard.train.retrieval import RetrievalMetrics, pool_by_video, retrieval_metrics

log = logging.getLogger("streamguard.train")

STATE_FILE = "training_state.pt"
_STATE_FORMAT = "streamguard-a2v-training/1"
# Options a resumed run may change: training longer, checkpointing more or less often.
_RESUMABLE_CHANGES = {"epochs", "checkpoint_steps"}


class TrainingStateError(ValueError):
    """An output folder whose training state does not fit the run asked for."""


@dataclass
class TrainResult:
    history: list[dict[str, Any]]  # one record per epoch (losses, validation retrieval)
    predictor: RetrievalMetrics  # validation retrieval of the trained predictor
    mean_audio: RetrievalMetrics  # the same retrieval with the mean audio embedding ("orig")
    train_videos: list[str]
    val_videos: list[str]
    train_chunks: int
    val_chunks: int
    steps: int
    out: Path  # the predictor folder
    resumed_from: dict[str, int] | None = None  # {"epoch", "batch"} where a resumed run picked up


@dataclass
class _Chunks:
    """Chunks of some videos, stacked: audio (N, L, d), video (N, d), video index (N,)."""

    audio: torch.Tensor
    video: torch.Tensor
    video_ids: torch.Tensor
    names: list[str]

    @classmethod
    def of(cls, videos: list[VideoFeatures]) -> _Chunks:
        ids = torch.cat([torch.full((v.num_chunks,), i, dtype=torch.long) for i, v in enumerate(videos)])
        return cls(
            audio=torch.cat([v.audio for v in videos]),
            video=torch.cat([v.video for v in videos]),
            video_ids=ids,
            names=[v.name for v in videos],
        )

    def __len__(self) -> int:
        return int(self.video_ids.numel())


def split_videos(
    videos: list[VideoFeatures], val_fraction: float, seed: int
) -> tuple[list[VideoFeatures], list[VideoFeatures]]:
    """(train, val) by video: round(val_fraction·V) videos, at least one, held out (seeded)."""
    if len(videos) < 2:
        raise ValueError(
            f"training needs at least 2 usable videos (one is held out for validation), got {len(videos)}: "
            + ", ".join(v.name for v in videos)
        )
    ordered = sorted(videos, key=lambda v: v.name)
    order = torch.randperm(len(ordered), generator=torch.Generator().manual_seed(seed)).tolist()
    num_val = min(len(ordered) - 1, max(1, round(val_fraction * len(ordered))))
    val = sorted((ordered[i] for i in order[:num_val]), key=lambda v: v.name)
    train = sorted((ordered[i] for i in order[num_val:]), key=lambda v: v.name)
    return train, val


def read_state(out: Path) -> dict[str, Any] | None:
    """The training state in `out`, memory-mapped (cheap to read for a check); None if there is none."""
    path = Path(out) / STATE_FILE
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (RuntimeError, OSError, EOFError) as exc:
        raise TrainingStateError(f"unreadable training state {path}: {exc}") from exc
    if not isinstance(state, dict) or state.get("format") != _STATE_FORMAT:
        raise TrainingStateError(f"{path} is not a StreamGuard A2V training state")
    return state


def expect_run_folder(out: Path, resume: bool) -> dict[str, Any] | None:
    """The state to resume (None for a fresh run); refuses to overwrite a run or to resume nothing."""
    state = read_state(out)
    if state is None and resume:
        raise TrainingStateError(f"nothing to resume: {Path(out) / STATE_FILE} does not exist")
    if state is not None and not resume:
        raise TrainingStateError(
            f"{out} already holds a training run ({STATE_FILE}); pass --resume to continue it or choose "
            "another --out"
        )
    return state


def check_state_backbone(state: dict[str, Any], out: Path, backbone_id: str, hidden_size: int) -> None:
    """A run is resumed only on the backbone it was trained for (the predictor checkpoint's rule)."""
    if (
        backbone_name(state["backbone_id"]) != backbone_name(backbone_id)
        or state["hidden_size"] != hidden_size
    ):
        raise PredictorMismatchError(
            f"the training run in {out} is for backbone {state['backbone_id']!r} (hidden size "
            f"{state['hidden_size']}), but the loaded backbone is {backbone_id!r} (hidden size {hidden_size})"
        )


def train_predictor(
    videos: list[VideoFeatures],
    backbone_id: str,
    hidden_size: int,
    options: TrainOptions,
    out: str | Path,
    resume: bool = False,
    device: torch.device | str = "cpu",
    progress: Progress | None = None,
) -> TrainResult:
    """Train (or, with `resume`, continue training) an A2V predictor on `videos`' chunks into `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = expect_run_folder(out, resume)
    if state is not None:
        check_state_backbone(state, out, backbone_id, hidden_size)
    train_videos, val_videos = split_videos(videos, options.val_fraction, options.seed)
    train, val = _Chunks.of(train_videos), _Chunks.of(val_videos)
    run = _Run(options, backbone_id, hidden_size, out, device)
    if state is not None:
        run.restore(state, train.names, val.names)
    mean_audio = _mean_audio_retrieval(val)
    run.fit(train, val, progress)
    return TrainResult(
        history=run.history,
        predictor=RetrievalMetrics(**run.history[-1]["val_retrieval"]),
        mean_audio=mean_audio,
        train_videos=train.names,
        val_videos=val.names,
        train_chunks=len(train),
        val_chunks=len(val),
        steps=run.step,
        out=out,
        resumed_from=None if state is None else {"epoch": state["epoch"], "batch": state["batch"]},
    )


class _Run:
    """The model, its optimizer and where training stands."""

    def __init__(
        self, options: TrainOptions, backbone_id: str, hidden_size: int, out: Path, device: torch.device | str
    ):
        self.options = options
        self.backbone_id = backbone_id
        self.hidden_size = hidden_size
        self.out = out
        self.device = torch.device(device)
        config = A2VConfig(
            dim=hidden_size,
            num_queries=options.num_queries,
            num_layers=options.num_layers,
            num_heads=options.num_heads,
        )
        with torch.random.fork_rng(devices=[]):  # seeded initialisation, global RNG untouched
            torch.manual_seed(options.seed)
            self.model = A2VPredictor(config)
        self.model.to(self.device).train()
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=options.lr, weight_decay=options.weight_decay
        )
        self.epoch = 0  # the epoch under way
        self.batch = 0  # the next batch of that epoch
        self.step = 0
        self.running = _zero_sums()  # loss sums over the epoch's batches so far
        self.history: list[dict[str, Any]] = []
        self.split: dict[str, list[str]] = {}

    def restore(self, state: dict[str, Any], train_names: list[str], val_names: list[str]) -> None:
        saved = state["options"]
        changed = {
            name: (saved[name], value)
            for name, value in asdict(self.options).items()
            if name not in _RESUMABLE_CHANGES and saved.get(name) != value
        }
        if changed:
            details = ", ".join(f"{name} {old} (checkpoint) vs {new}" for name, (old, new) in changed.items())
            raise TrainingStateError(f"--resume with other settings than the run in {self.out}: {details}")
        if state["split"] != {"train": train_names, "val": val_names}:
            raise TrainingStateError(
                f"the usable videos differ from those the run in {self.out} was trained on; "
                "train into another --out"
            )
        started = state["epoch"] + (1 if state["batch"] else 0)  # epochs begun, the current one included
        if started > self.options.epochs:
            raise TrainingStateError(
                f"the run in {self.out} has already begun epoch {started}; pass --epochs {started} or more"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch, self.batch, self.step = state["epoch"], state["batch"], state["step"]
        self.running = dict(state["running"])
        self.history = list(state["history"])
        log.info("resuming at epoch %d, batch %d (step %d)", self.epoch + 1, self.batch, self.step)

    def fit(self, train: _Chunks, val: _Chunks, progress: Progress | None) -> None:
        self.split = {"train": train.names, "val": val.names}
        options = self.options
        per_epoch = -(-len(train) // options.batch_size)
        task = None
        if progress is not None:
            task = progress.add_task(
                "training", total=options.epochs * per_epoch, completed=self.epoch * per_epoch + self.batch
            )
        while self.epoch < options.epochs:
            batches = _epoch_order(len(train), options.seed, self.epoch).split(options.batch_size)
            while self.batch < len(batches):
                self._train_step(train, batches[self.batch])
                self.batch += 1
                self.step += 1
                if progress is not None and task is not None:
                    progress.advance(task)
                if options.checkpoint_steps and self.step % options.checkpoint_steps == 0:
                    self.save()
            self._end_epoch(val)
            self.save()

    def _train_step(self, train: _Chunks, batch: torch.Tensor) -> None:
        audio = train.audio[batch].to(self.device, torch.float32)
        target = train.video[batch].to(self.device, torch.float32)
        pred = self.model.predict(audio)
        loss, loss_cos, loss_ctr = a2v_loss(
            pred[:, None], target[:, None], train.video_ids[batch], self.options.lambda_cos, self.options.tau
        )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        n = float(batch.numel())
        for name, value in (("loss", loss), ("cos", loss_cos), ("ctr", loss_ctr)):
            self.running[name] += float(value.detach()) * n
        self.running["chunks"] += n

    def _end_epoch(self, val: _Chunks) -> None:
        seen = self.running["chunks"] or 1.0
        val_losses, retrieval = self.evaluate(val)
        record = {
            "epoch": self.epoch + 1,
            "step": self.step,
            "train_loss": self.running["loss"] / seen,
            "train_cos": self.running["cos"] / seen,
            "train_ctr": self.running["ctr"] / seen,
            **{f"val_{name}": value for name, value in val_losses.items()},
            "val_retrieval": retrieval.as_dict(),
        }
        self.history.append(record)
        log.info(
            "epoch %d: train loss %.4f, val loss %.4f, val R@1 %.1f",
            record["epoch"],
            record["train_loss"],
            record["val_loss"],
            retrieval.r1,
        )
        self.epoch, self.batch, self.running = self.epoch + 1, 0, _zero_sums()

    @torch.no_grad()
    def evaluate(self, val: _Chunks) -> tuple[dict[str, float], RetrievalMetrics]:
        """Validation loss (batches in one fixed seeded order, so epochs compare) and retrieval."""
        self.model.eval()
        size = self.options.batch_size
        preds = torch.cat(
            [
                self.model.predict(val.audio[i : i + size].to(self.device, torch.float32)).cpu()
                for i in range(0, len(val), size)
            ]
        )
        self.model.train()
        sums = _zero_sums()
        for batch in _epoch_order(len(val), self.options.seed, -1).split(size):
            loss, loss_cos, loss_ctr = a2v_loss(
                preds[batch][:, None],
                val.video[batch].float()[:, None],
                val.video_ids[batch],
                self.options.lambda_cos,
                self.options.tau,
            )
            n = float(batch.numel())
            for name, value in (("loss", loss), ("cos", loss_cos), ("ctr", loss_ctr)):
                sums[name] += float(value) * n
            sums["chunks"] += n
        losses = {name: sums[name] / sums["chunks"] for name in ("loss", "cos", "ctr")}
        retrieval = retrieval_metrics(
            pool_by_video(preds, val.video_ids), pool_by_video(val.video, val.video_ids)
        )
        return losses, retrieval

    def save(self) -> None:
        """Write the predictor files, then the training state, each replaced whole."""
        with tempfile.TemporaryDirectory(dir=self.out, prefix=".predictor.") as staging:
            save_predictor(self.model, staging, self.backbone_id, self.hidden_size)
            for name in (WEIGHTS_FILE, CONFIG_FILE):
                (Path(staging) / name).replace(self.out / name)
        state = {
            "format": _STATE_FORMAT,
            "backbone_id": self.backbone_id,
            "hidden_size": self.hidden_size,
            "options": asdict(self.options),
            "split": self.split,
            "epoch": self.epoch,
            "batch": self.batch,
            "step": self.step,
            "running": dict(self.running),
            "history": self.history,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
        }
        with atomic.replacing(self.out / STATE_FILE) as temporary:
            torch.save(state, temporary)


def _epoch_order(count: int, seed: int, epoch: int) -> torch.Tensor:
    """The chunk order of one epoch: a function of (seed, epoch) alone, so resuming replays it."""
    return torch.randperm(count, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch + 1))


def _zero_sums() -> dict[str, float]:
    return {"loss": 0.0, "cos": 0.0, "ctr": 0.0, "chunks": 0.0}


def _mean_audio_retrieval(val: _Chunks) -> RetrievalMetrics:
    """The paper's "orig" reference: each chunk's mean audio embedding in place of ĥ."""
    return retrieval_metrics(
        pool_by_video(mean_audio_reference(val.audio.float()), val.video_ids),
        pool_by_video(val.video, val.video_ids),
    )

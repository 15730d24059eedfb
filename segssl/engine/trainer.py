"""The trainer: the one place for devices, AMP, data parallelism, optimizers, checkpoints,
evaluation and logging. Methods only compute losses (see ``segssl.methods.base``)."""
from __future__ import annotations

import json
import logging
import math
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Optional

import torch
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from ..config import Config, dump_config, params_from_dict, to_dict
from ..data.adapters import build_adapter
from ..data.loaders import SegDataset, endless_loader, eval_loader
from ..data.splits import Splits, make_splits
from ..data.views import ViewMaker
from ..errors import ConfigError, SegsslError
from ..methods import METHODS, Method, StepContext
from ..models import build_model, output_stride
from . import distributed as D
from .checkpoint import capture_rng, load_checkpoint, restore_rng, save_atomic
from .evaluate import evaluate
from .interrupt import sigterm_as_interrupt
from .logger import MetricsLogger, setup_console_logging
from .metrics import format_table
from .optim import build_optimizer, build_scheduler
from .predictor import Predictor

log = logging.getLogger("segssl")


def resolve_device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device is '{name}' but CUDA is not available on this machine")
    if name == "cuda":
        return torch.device(f"cuda:{local_rank}")
    return torch.device(name)


def resolve_amp(mode: str, device: torch.device) -> Optional[torch.dtype]:
    if mode == "off" or (mode == "auto" and device.type != "cuda"):
        return None
    if mode == "fp16" or (mode == "auto" and not torch.cuda.is_bf16_supported()):
        return torch.float16
    return torch.bfloat16


class Trainer:
    def __init__(self, cfg: Config, run_dir: str | Path, resume: bool = False, splits: Optional[Splits] = None) -> None:
        """``splits`` replaces the draw from ``cfg.data.split`` (the label audit trains on K-1 folds)."""
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        wants_cuda = cfg.train.device.startswith("cuda") or (cfg.train.device == "auto" and torch.cuda.is_available())
        self.dist = D.init_distributed("cuda" if wants_cuda else "cpu")
        self.device = resolve_device(cfg.train.device, self.dist.local_rank)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.amp_dtype = resolve_amp(cfg.train.amp, self.device)
        last = self.run_dir / "checkpoints" / "last.pt"
        if self.dist.is_main:
            if last.exists() and not resume:
                raise SegsslError(f"{self.run_dir} already holds a run; pass --resume to continue it or choose another --work-dir")
            (self.run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        D.barrier()
        setup_console_logging(self.run_dir, self.dist.is_main)
        torch.manual_seed(cfg.train.seed)  # same initial weights on every rank
        if cfg.train.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)

        d = cfg.data
        self.adapter = build_adapter(d.adapter, d.root, d.params)
        self.splits = splits if splits is not None else make_splits(self.adapter, d.split)
        method_cls = METHODS.get(cfg.method.name)
        params = params_from_dict(method_cls.Params, cfg.method.params, "method.params")
        make_net = lambda: build_model(cfg.model, self.adapter.in_channels, self.adapter.num_classes)  # noqa: E731
        self.method: Method = method_cls(make_net, self.adapter.num_classes, params).to(self.device)
        if cfg.train.channels_last:  # only 4-D weights change layout; inputs follow the weights
            self.method.to(memory_format=torch.channels_last)
        D.broadcast_module(self.method)
        self.stride = output_stride(self.method.eval_model())
        specs = self.method.optimizer_specs()
        self.optimizers = {name: build_optimizer(spec, cfg.train.optim) for name, spec in specs.items()}
        self.schedulers = {name: build_scheduler(self.optimizers[name], cfg.train.optim, cfg.train.max_steps, spec.schedule) for name, spec in specs.items()}
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.step = 0
        self.best: dict[str, Any] = {"value": -math.inf, "step": None}
        # training wall time of earlier segments of a resumed run, and when this segment began
        self.seconds_before, self.segment_start = 0.0, time.time()
        if resume and last.exists():
            self._restore(load_checkpoint(last, self.device))
        elif resume:
            log.info("no checkpoint in %s: starting a new run", self.run_dir)
        torch.manual_seed(cfg.train.seed + 7919 * self.dist.rank + self.step)  # per-rank dropout/cutmix streams
        self.logger = MetricsLogger(self.run_dir, enabled=self.dist.is_main)
        if self.dist.is_main:
            dump_config(cfg, self.run_dir / "config.yaml")
            (self.run_dir / "meta.json").write_text(json.dumps(self.meta(), indent=2))
        counts = self.splits.counts()
        log.info("data: %s | method: %s | model: %s/%s | device: %s%s | world size %d",
                 ", ".join(f"{k} {v}" for k, v in counts.items()), cfg.method.name, cfg.model.arch,
                 cfg.model.encoder, self.device, f" amp {self.amp_dtype}" if self.amp_dtype else
                 f" ({torch.get_num_threads()} threads)" if self.device.type == "cpu" else "", self.dist.world_size)

    # ------------------------------------------------------------------ state
    def meta(self) -> dict[str, Any]:
        d = self.cfg.data
        return {**self.adapter.describe(), "mean": d.mean, "std": d.std, "resize": d.resize, "stride": self.stride}

    def _state(self) -> dict[str, Any]:
        return {
            "format": 1, "step": self.step, "best": self.best, "meta": self.meta(), "config": to_dict(self.cfg),
            "model": self.method.eval_model().state_dict(), "method": self.method.state_dict(),
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "schedulers": {k: s.state_dict() for k, s in self.schedulers.items()},
            "scaler": self.scaler.state_dict(), "rng": capture_rng(),
            "train_seconds": self.seconds_before + time.time() - self.segment_start,
        }

    def _restore(self, state: dict[str, Any]) -> None:
        self.method.load_state_dict(state["method"])
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][name])
        for name, sched in self.schedulers.items():
            sched.load_state_dict(state["schedulers"][name])
        self.scaler.load_state_dict(state["scaler"])
        self.step, self.best = int(state["step"]), dict(state["best"])
        self.seconds_before = float(state.get("train_seconds", 0.0))  # absent in checkpoints before it was recorded
        restore_rng(state["rng"])
        log.info("resumed from %s at step %d", self.run_dir / "checkpoints" / "last.pt", self.step)

    def save(self, name: str, state: Optional[dict[str, Any]] = None) -> None:
        if self.dist.is_main:
            save_atomic(state if state is not None else self._state(), self.run_dir / "checkpoints" / f"{name}.pt")

    # ------------------------------------------------------------------ data
    def _views(self, train: bool, views: tuple[str, ...] = (), hide_labels: bool = False) -> ViewMaker:
        return ViewMaker(self.cfg.data, self.adapter.in_channels, train, views, hide_labels)

    def _stream(self, items: list, views: tuple[str, ...], batch_size: int, salt: int, hide_labels: bool = False):  # noqa: ANN202
        d = self.cfg.data
        dataset = SegDataset(self.adapter, items, self._views(True, views, hide_labels), skip_bad=True, cache=d.cache)
        return endless_loader(dataset, batch_size, self.cfg.train.seed + salt, self.dist.rank, self.dist.world_size, self.step, d.num_workers)

    def _eval_loader(self, items: list, hide_labels: bool = False):  # noqa: ANN202
        d = self.cfg.data
        dataset = SegDataset(self.adapter, items, self._views(False, (), hide_labels), cache=False)
        return eval_loader(dataset, d.eval_batch_size, self.dist.rank, self.dist.world_size, d.num_workers, self.stride)

    def _to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {k: v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}

    # ------------------------------------------------------------------ optimisation
    def _autocast(self):  # noqa: ANN202
        return torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype else nullcontext()

    def _backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss).backward()

    def _optimizer_step(self, name: str) -> None:
        optimizer = self.optimizers[name]
        params = [p for group in optimizer.param_groups for p in group["params"]]
        D.all_reduce_gradients(params)
        if self.cfg.train.grad_clip is not None:
            self.scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, self.cfg.train.grad_clip)
        self.scaler.step(optimizer)
        optimizer.zero_grad(set_to_none=True)

    def _context(self) -> StepContext:
        return StepContext(
            step=self.step, max_steps=self.cfg.train.max_steps, device=self.device,
            num_classes=self.adapter.num_classes, autocast=self._autocast,
            backward=self._backward, optimizer_step=self._optimizer_step,
            run_dir=self.run_dir, is_main=self.dist.is_main, unlabeled_pool=self._unlabeled_pool,
        )

    def _unlabeled_pool(self):  # noqa: ANN202
        for batch in self._eval_loader(self.splits.unlabeled, hide_labels=True):
            yield self._to_device(batch)

    def train_step(self, labeled: dict[str, Any], unlabeled: Optional[dict[str, Any]]) -> dict[str, Any]:
        self.method.train()
        ctx = self._context()
        with self._autocast():
            out = self.method.training_step(labeled, unlabeled, ctx)
        loss = out["loss"]
        if not torch.isfinite(loss.detach()).all():
            terms = {k: float(v) for k, v in out.items() if k.startswith("loss")}
            raise SegsslError(f"loss is not finite at step {self.step + 1}: {terms}; "
                              f"last good checkpoint: {self.run_dir / 'checkpoints' / 'last.pt'}")
        if not self.method.manual_optimization:
            self._backward(loss)
            for name in self.optimizers:
                self._optimizer_step(name)
        self.scaler.update()  # once per iteration, after every optimizer stepped (PyTorch AMP recipe)
        for scheduler in self.schedulers.values():
            scheduler.step()
        self.step += 1
        self.method.on_after_step(ctx)
        return out

    # ------------------------------------------------------------------ loop
    def fit(self) -> dict[str, Any]:
        cfg, d = self.cfg, self.cfg.data
        for sched in self.schedulers.values():
            sched.total_steps["total"] = cfg.train.max_steps  # type: ignore[attr-defined]
        labeled_iter = self._stream(self.splits.labeled, (), d.batch_size, 0)
        unlabeled_iter = None
        if self.method.uses_unlabeled:
            if not self.splits.unlabeled:
                raise ConfigError(f"method '{cfg.method.name}' needs unlabeled images; data.split gives none "
                                  "(set data.split.labeled to a fraction or list data.split.unlabeled)")
            unlabeled_iter = self._stream(self.splits.unlabeled, self.method.unlabeled_views,
                                          d.unlabeled_batch_size or d.batch_size, 1, hide_labels=True)
        val_loader = self._eval_loader(self.splits.val) if self.splits.val else None
        self.segment_start, start_step = time.time(), self.step
        sums: dict[str, float] = {}
        seen: dict[str, int] = {}  # per key: diagnostics such as pl_acc are absent from some steps
        count = 0
        bar = tqdm(total=cfg.train.max_steps, initial=self.step, disable=not self.dist.is_main, dynamic_ncols=True, desc="train")
        try:
            with logging_redirect_tqdm(), sigterm_as_interrupt():
                tick = time.time()
                while self.step < cfg.train.max_steps:
                    labeled = self._to_device(next(labeled_iter))
                    unlabeled = self._to_device(next(unlabeled_iter)) if unlabeled_iter is not None else None
                    out = self.train_step(labeled, unlabeled)
                    for key, value in out.items():
                        if torch.is_tensor(value) and value.numel() == 1 or isinstance(value, (int, float)):
                            sums[key] = sums.get(key, 0.0) + float(value.detach() if torch.is_tensor(value) else value)
                            seen[key] = seen.get(key, 0) + 1
                    count += 1
                    bar.update(1)
                    if self.step % cfg.train.log_every == 0 or self.step == cfg.train.max_steps:
                        rate = count / max(time.time() - tick, 1e-9)
                        values = {k: v / seen[k] for k, v in sums.items()}
                        values.update(lr=self.optimizers[next(iter(self.optimizers))].param_groups[0]["lr"], steps_per_s=rate)
                        self.logger.write(self.step, "train", values)
                        bar.set_postfix(loss=f"{values['loss']:.4f}", rate=f"{rate:.2f} it/s")
                        sums, seen, count, tick = {}, {}, 0, time.time()
                    if self.step % cfg.train.eval_every == 0 or self.step == cfg.train.max_steps:
                        self._validate(val_loader)
        except KeyboardInterrupt:
            log.warning("interrupted at step %d: saving last checkpoint", self.step)
            self.save("last")
            log.warning("saved %s; continue with --resume --work-dir %s", self.run_dir / "checkpoints" / "last.pt", self.run_dir)
            raise
        finally:
            bar.close()
        summary = self._finish(time.time() - self.segment_start, self.step - start_step)
        self.logger.close()
        return summary

    def predictor(self) -> Predictor:
        return Predictor(self.method.eval_model(), stride=self.stride, amp_dtype=self.amp_dtype)

    def _validate(self, val_loader: Any) -> None:
        D.broadcast_module(self.method)  # BatchNorm statistics differ per rank; evaluate rank 0's
        if val_loader is None:  # no validation split: the last model is the best one
            self.best = {"value": None, "step": self.step}
            state = self._state()
            self.save("last", state)
            self.save("best", _inference_state(state))
            return
        metrics = evaluate(self.predictor(), val_loader, self.adapter.num_classes, self.device)
        value = float(metrics[self.cfg.train.select_metric])  # type: ignore[arg-type]
        improved = value > (self.best["value"] if self.best["value"] is not None else -math.inf)
        if improved:
            self.best = {"value": value, "step": self.step, "metric": self.cfg.train.select_metric}
        self.logger.write(self.step, "val", {**metrics, "best": self.best["value"], "best_step": self.best["step"]})
        log.info("\nstep %d validation (%d images)%s\n%s", self.step, len(self.splits.val),
                 "  * new best" if improved else "", format_table(metrics, self.adapter.class_names))
        state = self._state()
        self.save("last", state)
        if improved:
            self.save("best", _inference_state(state))
        D.barrier()

    def _finish(self, seconds: float, steps: int) -> dict[str, Any]:
        # seconds: the whole run's training time, resumed segments included (time after a segment's
        # last checkpoint is lost with its steps); the rate is this segment's own
        summary: dict[str, Any] = {"steps": self.step, "seconds": round(self.seconds_before + seconds, 1),
                                   "seconds_this_segment": round(seconds, 1),
                                   "steps_per_s": round(steps / max(seconds, 1e-9), 3), "best": self.best}
        if self.splits.test:
            D.barrier()  # rank 0 wrote best.pt
            best = load_checkpoint(self.run_dir / "checkpoints" / "best.pt", self.device)
            self.method.eval_model().load_state_dict(best["model"])
            metrics = evaluate(self.predictor(), self._eval_loader(self.splits.test), self.adapter.num_classes, self.device)
            self.logger.write(self.step, "test", {**metrics, "checkpoint_step": self.best["step"]})
            log.info("\ntest (%d images, best checkpoint of step %s)\n%s", len(self.splits.test), self.best["step"],
                     format_table(metrics, self.adapter.class_names))
            summary["test"] = metrics
        if self.dist.is_main:
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
        return summary


def _inference_state(state: dict[str, Any]) -> dict[str, Any]:
    """``best`` keeps what inference and test evaluation need, not optimizer state."""
    return {k: state[k] for k in ("format", "step", "best", "meta", "config", "model")}

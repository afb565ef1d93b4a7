"""HyperSegNAS end to end: one super-net training, then a coarse-to-fine search per budget (paper 3.2).

Search folder::

    SEARCH_DIR/search.json              dataset, space, profile, variant (checked on --resume)
    SEARCH_DIR/plan.json
    SEARCH_DIR/supernet/                a run folder of the one trainer (checkpoints, logs, weights)
    SEARCH_DIR/budget-4GB/state.json    candidates with measured cost and scores (resume point)
    SEARCH_DIR/budget-4GB/leaderboard.csv, arch.json, arch.png

Per budget: collect K candidates whose measured cost lies in ``[budget (1 - window), budget]``, score
each with the super-net (mean Dice over the foreground regions of validation cases, patch-wise), fine-tune
the top N from inherited weights, score again, keep the best.

A resumed search may change the search-stage settings (``SearchProfile.SEARCH_STAGE``: candidates, window,
top N, fine-tuning, scoring cases) without training the super-net again: a budget searched with other
settings is searched anew, its measurements read back from the cost cache.
"""

from __future__ import annotations

import csv
import io
import json
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from segnas.cost.budget import Budget
from segnas.cost.measure import CostReport, measure_cost
from segnas.data.dataset import load_dataset
from segnas.data.plan import Plan, make_plan
from segnas.data.transforms import TrainingBatches, augmentation, cached_cases
from segnas.engine.inference import predict_logits
from segnas.engine.metrics import dice_per_label
from segnas.engine.run import train_run
from segnas.engine.trainer import CHECKPOINT_NAME, TrainConfig, Trainer
from segnas.errors import SegnasInputError
from segnas.networks.topology_net import derive
from segnas.report.draw import draw_architecture
from segnas.spaces.architecture import Architecture
from segnas.spaces.presets import unet_architecture
from segnas.spaces.topology import TopologySpace
from segnas.strategies.folders import check_resume
from segnas.strategies.hypersegnas.candidates import CandidateSearch, collect_candidates, measured_range
from segnas.strategies.hypersegnas.meta_assistant import FIXED_WEIGHT
from segnas.strategies.hypersegnas.supernet import HyperSuperNet, SupernetTrainingHook
from segnas.utils.distributed import barrier, broadcast_object, gather_dicts, is_main, rank, world_size
from segnas.utils.files import atomic_write_text, check_output_dir, prepare_output_dir
from segnas.utils.progress import progress
from segnas.utils.runtime import configure_torch, pick_device


@dataclass(frozen=True)
class SearchProfile:
    """Sizes of one HyperSegNAS search. ``patch_size=None`` takes the plan's patch.

    ``finetune_lr_factor`` scales ``lr`` for fine-tuning candidates; ``score_cases=None`` scores on every
    validation case of the fold. The fields in ``SEARCH_STAGE`` affect only the per-budget search.
    """

    SEARCH_STAGE = ("candidates", "top_n", "finetune_steps", "finetune_lr_factor", "window", "score_cases")

    name: str
    space: TopologySpace
    batch_size: int
    supernet_steps: int
    anneal_steps: int
    candidates: int
    top_n: int
    finetune_steps: int
    lr: float = 3e-3
    finetune_lr_factor: float = 0.1
    window: float = 0.03
    score_cases: int | None = None
    patch_size: tuple[int, int, int] | None = None

    def to_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in asdict(self).items() if k != "space"}
        data["patch_size"] = list(self.patch_size) if self.patch_size else None
        return {**data, "space": self.space.to_dict()}

    def search_stage(self) -> dict[str, Any]:
        """The settings of the per-budget search (kept in each budget's state)."""
        return {name: getattr(self, name) for name in self.SEARCH_STAGE}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SearchProfile":
        data = dict(data)
        patch = data.pop("patch_size")
        return cls(space=TopologySpace.from_dict(data.pop("space")), patch_size=tuple(patch) if patch else None,
                   **data)


PROFILES = {
    # The paper's configuration (section 4): for GPUs.
    "paper": SearchProfile("paper", TopologySpace(), batch_size=8, supernet_steps=160_000, anneal_steps=20_000,
                           candidates=2000, top_n=10, finetune_steps=5000, window=0.05,
                           patch_size=(96, 96, 96)),
    # Scaled for 2 CPU cores and small data such as Hippocampus (see docs/design.md, "Profiles"): a smaller
    # space (8 blocks, 3 scales, 8..32 channels) so that the super-net gets the ~2,400 steps it needs on CPU
    # before uniformly sampled sub-nets segment at all; 0.26 s per step at batch 2 and 40x56x40 patches (stride 8).
    # Fine-tuning at the full learning rate for 1,000 steps, scored on every validation case: the estimator that
    # ranked a fresh set of architectures above Kendall tau 0.55 under a rule stated before it ran
    # (docs/benchmarks.md, "Ranking"; 300 steps before).
    "cpu": SearchProfile("cpu", TopologySpace(num_blocks=8, num_depths=3, channel_mul=0.25), batch_size=2,
                         supernet_steps=2400, anneal_steps=600, candidates=16, top_n=3, finetune_steps=1000,
                         finetune_lr_factor=1.0, score_cases=None),
    # For tests: a 3-block, 2-scale space and a handful of steps.
    "tiny": SearchProfile("tiny", TopologySpace(num_blocks=3, num_depths=2, channel_mul=0.125), batch_size=1,
                          supernet_steps=4, anneal_steps=2, candidates=3, top_n=1, finetune_steps=2, window=0.5,
                          score_cases=2),
}


# ----- scoring ---------------------------------------------------------------------------------------------------
def foreground_region(image: torch.Tensor, label: torch.Tensor, multiple: int, margin: int = 8,
                      max_size: int = 192) -> tuple[torch.Tensor, torch.Tensor]:
    """Crop ``(C, H, W, D)`` image and ``(1, H, W, D)`` label to the label's bounding box plus ``margin``,
    at most ``max_size`` voxels per side (the paper's 192 mm at 1 mm spacing), sides rounded up to ``multiple``
    where the image allows."""
    foreground = label[0].nonzero()
    if len(foreground) == 0:
        return image, label
    slices = []
    for axis in range(3):
        lo = int(foreground[:, axis].min()) - margin
        hi = int(foreground[:, axis].max()) + 1 + margin
        size = min(int(np.ceil((hi - lo) / multiple) * multiple), max_size, image.shape[axis + 1])
        centre = (lo + hi) // 2
        start = int(np.clip(centre - size // 2, 0, image.shape[axis + 1] - size))
        slices.append(slice(start, start + size))
    return image[(slice(None), *slices)], label[(slice(None), *slices)]


def score(model: Callable[..., torch.Tensor], cases: Sequence[dict], patch_size: list[int], num_classes: int,
          device: torch.device, forward_kwargs: dict[str, Any] | None = None) -> float:
    """Mean Dice over the foreground regions of ``cases`` (preprocessed), predicted patch by patch."""
    dices = []
    for case in cases:
        image, label = foreground_region(torch.as_tensor(case["image"]), torch.as_tensor(case["label"]),
                                         min(patch_size))
        logits = predict_logits(model, image[None].to(device), patch_size, overlap=0.25,
                                forward_kwargs=forward_kwargs)
        dices.append(dice_per_label(logits.argmax(1)[0].cpu(), label[0], num_classes))
    return float(np.nanmean(np.array(dices, dtype=float)))


# ----- the search -------------------------------------------------------------------------------------------------
def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def _write_json(path: Path, data: Any) -> None:
    if is_main():
        atomic_write_text(path, json.dumps(data, indent=1) + "\n")


@contextmanager
def _phase_clock(state: dict[str, Any], phase: str) -> Iterator[None]:
    """Add the wall-clock of one search phase (this process's) to ``state["seconds"][phase]``: summed over
    resumed runs, so a budget's record says what its search cost however often it was interrupted."""
    start = time.perf_counter()
    yield
    seconds = state.setdefault("seconds", {})
    seconds[phase] = round(seconds.get(phase, 0.0) + time.perf_counter() - start, 1)


class HyperSegNASSearch:
    """One super-net training serving any number of budgets (only the search stage depends on a budget)."""

    def __init__(self, data_dir: str | Path, out: str | Path, profile: SearchProfile, variant: str = "hypersegnas",
                 fold: int = 0, seed: int = 0, device: str = "auto", resume: bool = False, force: bool = False,
                 show_progress: bool = True):
        configure_torch()
        self.data_dir, self.out, self.profile = Path(data_dir), Path(out), profile
        self.variant, self.fold, self.seed, self.resume = variant, fold, seed, resume
        self.device = pick_device(device)
        self.show_progress = show_progress
        self.spec = load_dataset(self.data_dir)
        record = {"format": "segnas.search", "version": 1, "strategy": "hypersegnas", "dataset": self.spec.name,
                  "space": profile.space.to_dict(), "profile": profile.name, "variant": variant, "fold": fold,
                  "seed": seed, "settings": profile.to_dict()}
        if resume:
            previous = check_resume(self.out, record, [f"settings.{name}" for name in profile.SEARCH_STAGE])
            self.plan = Plan.load(self.out / "plan.json")
            if previous["settings"] != record["settings"]:  # new search-stage settings from now on
                _write_json(self.out / "search.json", {**record, "data_dir": previous["data_dir"]})
        else:
            check_output_dir(self.out, force, "search folder")  # refuse before any work
            self.plan = make_plan(self.spec, stride=profile.space.total_stride, show_progress=show_progress)
            if profile.patch_size:
                self.plan.patch_size = list(profile.patch_size)
        self._record, self._force = record, force
        self.model: HyperSuperNet | None = None
        self._val_cases: Any = None
        self._train_cases: Any = None

    # ----- stage 1 and 2: super-net training with the Meta-Assistant and annealing -------------------------------
    def train_supernet(self) -> HyperSuperNet:
        profile = self.profile
        torch.manual_seed(self.seed)
        model = HyperSuperNet(profile.space, self.plan.num_channels, self.plan.num_classes, self.variant)
        run_dir = self.out / "supernet"
        done = (run_dir / "model_final.pt").is_file()
        if not done:
            hook = SupernetTrainingHook(model, profile.supernet_steps, profile.anneal_steps, self.seed,
                                        unet_architecture(profile.space))
            config = TrainConfig(max_steps=profile.supernet_steps + profile.anneal_steps, batch_size=profile.batch_size,
                                 lr=profile.lr, seed=self.seed, checkpoint_every=max(10, profile.supernet_steps // 20))
            network = {"kind": "hypersegnas-supernet", "space": profile.space.to_dict(), "variant": self.variant,
                       "in_channels": self.plan.num_channels, "out_channels": self.plan.num_classes}
            # The search owns supernet/: without a checkpoint (interrupted before the first one) start it anew.
            resumable = (run_dir / "checkpoint_last.pt").is_file()
            train_run(self.data_dir, self.plan, network, run_dir, self.fold, config, resume=resumable,
                      force=not resumable, device=str(self.device), hooks=[hook], model=model, spec=self.spec,
                      show_progress=self.show_progress)
        state = torch.load(run_dir / "model_final.pt", map_location=self.device, weights_only=False)["state_dict"]
        model.load_state_dict(state)
        if not model.keeps_hypernet:
            model.remove_hypernet()
        self.model = model.to(self.device).eval()
        return self.model

    # ----- stage 3: coarse-to-fine search per budget ----------------------------------------------------------
    def _scoring_cases(self) -> Any:
        if self._val_cases is None:
            ids = self.plan.fold(self.fold)["val"][: self.profile.score_cases]
            self._val_cases = cached_cases(self.spec, self.plan, ids, show_progress=False)
        return self._val_cases

    def _training_cases(self) -> Any:
        if self._train_cases is None:
            ids = self.plan.fold(self.fold)["train"]
            self._train_cases = cached_cases(self.spec, self.plan, ids, show_progress=False)
        return self._train_cases

    def _network_spec(self, arch: Architecture) -> dict[str, Any]:
        removes_hypernet = self.variant in ("noanneal", "hypersegnas")
        return {"kind": "topology", "architecture": arch.to_dict(), "merge": "mean",
                "in_channels": self.plan.num_channels, "out_channels": self.plan.num_classes,
                "fixed_channel_weight": FIXED_WEIGHT if removes_hypernet else None}

    def measure(self, arch: Architecture) -> CostReport:
        return measure_cost(self._network_spec(arch), self.plan.patch_size, self.profile.batch_size, self.device)

    def score_supernet(self, arch: Architecture, cases: Sequence[dict] | None = None) -> float:
        """The super-net's raw estimate of ``arch`` on ``cases`` (default: the profile's scoring cases)."""
        assert self.model is not None
        return self.score_network(self.model, cases, {"architecture": arch})

    def finetuned_network(self, arch: Architecture, run_dir: Path, steps: int | None = None,
                          lr_factor: float | None = None, resume: bool = False) -> torch.nn.Module:
        """``arch`` cut out of the super-net (weights inherited) and trained ``steps`` at ``lr_factor`` times
        the profile's learning rate (both default to the profile's fine-tuning); returned in eval mode.
        ``resume`` continues (or, when finished, just reloads) the checkpoint in ``run_dir``: only for folders
        that name their steps and learning rate, since the search's own folders outlive a change of both."""
        assert self.model is not None
        steps = steps or self.profile.finetune_steps
        lr_factor = self.profile.finetune_lr_factor if lr_factor is None else lr_factor
        net = derive(self.model.supernet, arch)
        batches = TrainingBatches(self._training_cases(), augmentation(self.plan, "flips"), self.profile.batch_size,
                                  self.seed, steps)
        config = TrainConfig(max_steps=steps, batch_size=self.profile.batch_size, lr=self.profile.lr * lr_factor,
                             seed=self.seed, checkpoint_every=10**9, log_every=10)
        # Under torchrun each rank fine-tunes its own candidates: no gradient averaging across ranks.
        Trainer(net, batches, None, config, run_dir, self.plan.num_classes, self.plan.patch_size, (), self.device,
                show_progress=False, distributed=False).fit(resume=resume and (run_dir / CHECKPOINT_NAME).is_file())
        return net.eval()

    def score_network(self, net: torch.nn.Module, cases: Sequence[dict] | None = None,
                      forward_kwargs: dict[str, Any] | None = None) -> float:
        """Dice of ``net`` on ``cases`` (default: the profile's scoring cases)."""
        with torch.no_grad():
            return score(net, self._scoring_cases() if cases is None else cases, self.plan.patch_size,
                         self.plan.num_classes, self.device, forward_kwargs)

    def finetune(self, arch: Architecture, run_dir: Path) -> float:
        """The search's fine-tuned estimate: the profile's fine-tuning, scored on the profile's cases."""
        return self.score_network(self.finetuned_network(arch, run_dir))

    def validation_cases(self) -> Any:
        """Every validation case of the fold, preprocessed (the profile may score on fewer)."""
        return cached_cases(self.spec, self.plan, self.plan.fold(self.fold)["val"], show_progress=False)

    def search_budget(self, budget: Budget) -> Architecture:
        """Collect, score, fine-tune and choose for one budget; resumes from the budget folder's state."""
        profile, folder = self.profile, self.out / budget.label()
        folder.mkdir(parents=True, exist_ok=True)
        state = _read_json(folder / "state.json")
        if state.get("settings") != profile.search_stage():
            if state and self.show_progress and is_main():
                print(f"{budget.text}: searched before with other settings ({state.get('settings')}); searching "
                      "this budget again", flush=True)
            state = {"budget": budget.text, "settings": profile.search_stage(), "candidates": {}}
        # Measuring is rank 0's job (parallel processes would disturb latency and timing figures).
        if is_main():
            with _phase_clock(state, "collection"):
                self._collect(budget, state)
        state = broadcast_object(state)
        candidates: dict[str, dict[str, Any]] = state["candidates"]
        if not candidates:
            raise SegnasInputError(f"no architecture measured inside [{1 - profile.window:.0%}, 100%] of budget "
                                   f"{budget.text} after {state['collection']['measured']} measurements; widen the "
                                   "window", "--budget")
        with _phase_clock(state, "scoring"):
            self._on_each(state, folder, list(candidates), "supernet_score", f"{budget.text}: scoring",
                          lambda key, arch: self.score_supernet(arch))
        ranked = sorted(candidates, key=lambda k: -candidates[k]["supernet_score"])
        with _phase_clock(state, "finetuning"):
            self._on_each(state, folder, ranked[: profile.top_n], "finetuned_score", f"{budget.text}: fine-tuning",
                          lambda key, arch: self.finetune(arch, folder / "finetune" / key))
        _write_json(folder / "state.json", state)
        collection = CandidateSearch(**state["collection"])
        best_key = max(ranked[: profile.top_n], key=lambda k: candidates[k]["finetuned_score"])
        best = Architecture.from_dict(candidates[best_key]["architecture"])
        best.metadata = {"strategy": "hypersegnas", "variant": self.variant, "budget": budget.text,
                         "budget_kind": budget.kind, "budget_value": budget.value,
                         "cost": candidates[best_key]["cost"],
                         "supernet_score": candidates[best_key]["supernet_score"],
                         "finetuned_score": candidates[best_key]["finetuned_score"],
                         "candidates_drawn": collection.drawn, "candidates_measured": collection.measured,
                         "candidates_accepted": len(candidates), "space_range": state["range"],
                         "search_seconds": state["seconds"]}
        if is_main():
            best.save(folder / "arch.json")
            draw_architecture(best, folder / "arch.png", title=f"HyperSegNAS, budget {budget.text}")
            self._write_leaderboard(folder / "leaderboard.csv", budget, candidates, ranked)
        return best

    def _collect(self, budget: Budget, state: dict[str, Any]) -> None:
        """Measure the space's range and collect the budget's candidates into ``state`` (saved as it goes)."""
        folder, profile = self.out / budget.label(), self.profile
        if "range" not in state:
            state["range"] = list(measured_range(profile.space, budget, self.measure))

        def accept(arch: Architecture, report: CostReport) -> None:
            state["candidates"][arch.key()] = {"architecture": arch.to_dict(), "cost": report.to_dict()}

        collection = CandidateSearch(**state["collection"]) if "collection" in state else None
        collection = collect_candidates(profile.space, budget, self.measure, profile.candidates, profile.window,
                                        self.seed, state=collection, on_accept=accept)
        state["collection"] = asdict(collection)
        _write_json(folder / "state.json", state)

    def _on_each(self, state: dict[str, Any], folder: Path, keys: list[str], field: str, desc: str,
                 compute: Callable[[str, Architecture], float]) -> None:
        """Fill ``field`` of the candidates ``keys`` that lack it, split across ranks; saved after each one."""
        candidates = state["candidates"]
        todo = [key for key in keys if field not in candidates[key]][rank()::world_size()]
        mine: dict[str, float] = {}
        for key in progress(todo, desc=desc, unit="arch", enabled=self.show_progress):
            mine[key] = compute(key, Architecture.from_dict(candidates[key]["architecture"]))
            if world_size() == 1:
                candidates[key][field] = mine[key]
                _write_json(folder / "state.json", state)
        for key, value in gather_dicts(mine).items():
            candidates[key][field] = value
        _write_json(folder / "state.json", state)

    @staticmethod
    def _write_leaderboard(path: Path, budget: Budget, candidates: dict[str, dict], ranked: list[str]) -> None:
        buffer = io.StringIO()
        fields = ["rank", "key", "active_edges", "cost", "memory_bytes", "parameters", "flops_forward", "latency_ms",
                  "supernet_score", "finetuned_score"]
        writer = csv.DictWriter(buffer, fieldnames=fields)
        writer.writeheader()
        for position, key in enumerate(ranked, 1):
            item, report = candidates[key], candidates[key]["cost"]
            writer.writerow({"rank": position, "key": key,
                             "active_edges": int(np.sum(item["architecture"]["edges"])),
                             "cost": budget.cost_of(CostReport(**report)), "memory_bytes": report["memory_bytes"],
                             "parameters": report["parameters"], "flops_forward": report["flops_forward"],
                             "latency_ms": report["latency_ms"], "supernet_score": item["supernet_score"],
                             "finetuned_score": item.get("finetuned_score", "")})
        atomic_write_text(path, buffer.getvalue())

    def check_budgets(self, budgets: Sequence[Budget]) -> None:
        """Refuse budgets outside the space's measured range before any training (measured, then cached)."""
        for budget in budgets:
            measured_range(self.profile.space, budget, self.measure)

    def create_folder(self) -> None:
        """Write the new search folder (only once the budgets are known to be reachable)."""
        if is_main():
            prepare_output_dir(self.out, self._force, "search folder")
            self.plan.save(self.out / "plan.json")
            _write_json(self.out / "search.json", {**self._record, "data_dir": str(self.data_dir.resolve())})
        barrier()

    def run(self, budgets: Sequence[Budget]) -> dict[str, Architecture]:
        self.check_budgets(budgets)
        if not self.resume:
            self.create_folder()
        self.train_supernet()
        return {budget.text: self.search_budget(budget) for budget in budgets}


def open_search(search_dir: str | Path, device: str = "auto") -> HyperSegNASSearch:
    """Reopen a finished or interrupted search with the settings it last ran with."""
    record = _read_json(Path(search_dir) / "search.json")
    if not record:
        raise SegnasInputError("not a segnas search folder (no search.json)", search_dir)
    return HyperSegNASSearch(record["data_dir"], search_dir, SearchProfile.from_dict(record["settings"]),
                             record["variant"], record["fold"], record["seed"], device, resume=True)


def profile_named(name: str, **overrides: Any) -> SearchProfile:
    if name not in PROFILES:
        raise SegnasInputError(f"unknown profile {name!r}; choose one of {sorted(PROFILES)}", "--profile")
    return replace(PROFILES[name], **{k: v for k, v in overrides.items() if v is not None})

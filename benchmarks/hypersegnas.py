"""HyperSegNAS benchmarks on Task04_Hippocampus fold 0 (paper Table 1 / Fig. 3, Table 2, Fig. 4), or another
dataset's (``--data``, ``--group-by``; its files named ``hypersegnas_<part>_<dataset>``).

    python benchmarks/hypersegnas.py ablation            # 3 super-nets, the same 25 architectures scored by each
    python benchmarks/hypersegnas.py search              # 3 budgets across the measured range + retraining
    python benchmarks/hypersegnas.py ranking             # Kendall tau: 10 candidates of one budget, 12 random ones
    python benchmarks/hypersegnas.py ranking-noise       # after ranking: seed noise of its ground truth
    python benchmarks/hypersegnas.py ranking-estimators --set spread   # after ranking: which fine-tuning ranks best
    python benchmarks/hypersegnas.py ranking-pooled      # after ranking --seed S for each S of --pool: sets together
    python benchmarks/hypersegnas.py selection           # from the recorded sets: which fine-tuning picks a winner
    python benchmarks/hypersegnas.py ablation --smoke    # tiny settings, to check the script runs

Each part prints its figures and writes ``benchmarks/results/hypersegnas_<part>.json``; wall-clock of
every stage is recorded (the cost of the search). The search folders live under ``benchmarks/work/`` and
every part resumes from them when run again. On ACDC (the ablation and the ranking of a fresh random set, with
stand-alone runs long enough for that task's curve, trained as ``segnas train`` trains). Both span sessions: the
ablation writes each super-net's scores to its results file as they are taken and a later call trains only the
variants missing there; the ranking writes every estimate and every stand-alone Dice as it is taken, and a later
call with all estimates recorded trains no super-net, only the stand-alone runs missing:

    python benchmarks/hypersegnas.py ablation --data ../shared/data/Task27_ACDC --group-by 'patient\\d+'
    python benchmarks/hypersegnas.py ranking --set spread --seed 2025 --steps 3000 --truth-recipe defaults \\
        --data ../shared/data/Task27_ACDC --group-by 'patient\\d+'
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import statistics
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from common import TRAIN_RECIPES, benchmark_parser, read_result, result_path, retrain_and_evaluate, write_result

from segnas.cost.budget import Budget, parse_budget
from segnas.engine.run import read_run
from segnas.report.plots import ablation_figure
from segnas.spaces.architecture import Architecture
from segnas.spaces.sampler import ArchitectureSampler
from segnas.strategies.hypersegnas.analysis import (analyze_ranking, budget_candidates, rank_correlations,
                                                    spread_architectures, train_standalone)
from segnas.spaces.presets import extreme_architectures
from segnas.api import prepare_search
from segnas.strategies.hypersegnas.strategy import HyperSegNASStrategy


def _search(args: argparse.Namespace, variant: str) -> HyperSegNASStrategy:
    """The benchmark's search of ``variant`` (its folder reopened when it exists); no budget checked yet."""
    strategy = HyperSegNASStrategy("tiny" if args.smoke else "cpu", {"variant": variant})
    out = args.work / f"{strategy.profile.name}-{variant}"
    return prepare_search(args.data, out, strategy, budgets=None, resume=(out / "search.json").is_file(),
                          group_by=args.group_by)


def _timed(label: str, timings: dict[str, float], work):
    start = time.perf_counter()
    result = work()
    timings[label] = round(time.perf_counter() - start, 1)
    return result


def ablation(args: argparse.Namespace) -> dict:
    """Super-nets of three variants, trained for the same steps, score the same 25 random architectures.

    Each variant's scores are written to the results file as they are taken, and a variant recorded there for the
    same architectures and profile is not trained again: on ACDC one super-net is an evening of the 2 cores, and
    the work folder does not outlive the session."""
    target = result_path(args, "hypersegnas_ablation")
    recorded = read_result(target) if target.is_file() else {}
    timings: dict[str, float] = {}
    variants = ["vanilla", "noanneal", "hypersegnas"]
    scores: dict[str, list[float]] = {}
    result: dict = {}
    for variant in variants:
        search = _search(args, variant)
        if not result:
            sampler = ArchitectureSampler(search.profile.space, 2024)
            architectures = [sampler.sample() for _ in range(3 if args.smoke else 25)]
            result = json.loads(json.dumps({  # as the results file holds it (lists, not tuples): comparable
                "architectures": [a.key() for a in architectures],
                "memory_bytes": [search.measure(a).memory_bytes for a in architectures],
                "profile": search.profile.to_dict()}, default=str))
            same = all(recorded.get(key) == result[key] for key in ("architectures", "profile"))
        if same and variant in recorded.get("dice", {}):
            print(f"{variant}: recorded, not trained again", flush=True)
            scores[variant] = recorded["dice"][variant]
            timings.update({f"{stage}_{variant}": recorded["seconds"][f"{stage}_{variant}"]
                            for stage in ("supernet", "scoring")})
        else:
            search.train_supernet()  # its training time comes from the run record: true also when resumed
            timings[f"supernet_{variant}"] = read_run(search.ctx.folder.path / "supernet")["train_seconds"]
            scores[variant] = _timed(f"scoring_{variant}", timings,
                                     lambda: [search.score_supernet(a) for a in architectures])
        result.update(mean_dice={v: float(np.mean(s)) for v, s in scores.items()}, dice=scores, seconds=timings)
        write_result(target, result)
    memory = result["memory_bytes"]
    order = list(np.argsort(memory))
    ablation_figure([memory[i] for i in order], {v: [scores[v][i] for i in order] for v in variants},
                    result_path(args, "hypersegnas_ablation", ".png"))
    return result


def search_budgets(args: argparse.Namespace) -> dict:
    """Three budgets at 25/50/75% of the measured memory range; winners retrained from scratch and scored."""
    timings: dict[str, float] = {}
    search = _search(args, "hypersegnas")
    small, large = _memory_range(search)
    budgets = [_budget_at(search, fraction) for fraction in (0.25, 0.5, 0.75)]
    search.train_supernet()
    timings["supernet_and_annealing"] = read_run(search.ctx.folder.path / "supernet")["train_seconds"]
    rows = []
    for budget in budgets:
        arch = search.search_budget(budget)
        meta = arch.metadata  # its search_seconds: the budget's search, summed over resumed runs
        timings[f"search_{budget.text}"] = round(sum(meta["search_seconds"].values()), 1)
        row = {"budget": budget.text, "budget_bytes": budget.value, "measured_bytes": meta["cost"]["memory_bytes"],
               "inside_3_percent": budget.value * 0.97 <= meta["cost"]["memory_bytes"] <= budget.value,
               "candidates_drawn": meta["candidates_drawn"], "candidates_measured": meta["candidates_measured"],
               "candidates_accepted": meta["candidates_accepted"], "supernet_score": meta["supernet_score"],
               "finetuned_score": meta["finetuned_score"], "active_edges": int(arch.edges.sum())}
        rows.append(row)
        if args.skip_retrain:
            print(json.dumps(row, indent=1), flush=True)
            continue
        row.update(retrain_and_evaluate(args.data, search.ctx.dataset, search.ctx.plan, arch,
                                        search.ctx.folder.budget_dir(budget.label()) / "retrained", args.minutes,
                                        args.smoke))
        print(json.dumps(row, indent=1), flush=True)
    return {"range_bytes": [small, large], "budgets": rows, "seconds": timings, "retrain_minutes": args.minutes}


def _memory_range(search: HyperSegNASStrategy) -> tuple[int, int]:
    """Measured training memory of the space's smallest and largest architectures (cached)."""
    small, large = (search.measure(a).memory_bytes for a in extreme_architectures(search.profile.space))
    return small, large


def _budget_at(search: HyperSegNASStrategy, fraction: float) -> Budget:
    """A memory budget ``fraction`` of the way across the space's measured range."""
    small, large = _memory_range(search)
    return parse_budget(f"{int(small + fraction * (large - small))}B")


def _spread_folder(args: argparse.Namespace) -> Path:
    """Work folder of the random set drawn with ``--seed`` (the first set, seed 2024, keeps its old name)."""
    return args.work / ("ranking-spread" if args.seed == 2024 else f"ranking-spread-seed{args.seed}")


def _estimates_measured_before(folder: Path, search: HyperSegNASStrategy) -> dict[str, dict[str, float]]:
    """The profile's raw and fine-tuned estimates of a ranked set's architectures where the ranking-estimators
    part already computed them (``folder/estimators.json``): the same fine-tuning, seed and scoring cases give
    the same numbers, so the ranking part need not fine-tune again. Empty where it has no such entries."""
    path, profile = folder / "estimators.json", search.profile
    cases = {None: len(search.evaluator.validation_cases()), 12: 12}.get(profile.score_cases)
    if not path.is_file() or cases not in (12, 42):
        return {}
    names = {"finetuned_score": f"lr{profile.finetune_lr_factor:g}_s{profile.finetune_steps}_{cases}",
             "supernet_score": f"raw_{cases}"}
    return {key: {field: item[name] for field, name in names.items() if name in item}
            for key, item in json.loads(path.read_text()).items()}


def ranking(args: argparse.Namespace) -> dict:
    """Kendall tau of raw and fine-tuned super-net estimates against stand-alone training, on two sets: the ten
    best candidates inside the middle budget's 3% window (what the search itself must order) and twelve
    architectures drawn at random from the space, spread over measured memory (``--seed``; 2024 gives the
    ablation's first 25 draws, every other one in memory order; another seed a fresh set)."""
    search = _search(args, "hypersegnas")
    steps = args.steps
    tag = "" if args.smoke or steps == 500 else f"_steps{steps}"  # never over a real figure (smoke: result_path)
    result = {}
    if args.set in (None, "within"):
        budget = _budget_at(search, 0.5)
        search.search_budget(budget)
        architectures, known = budget_candidates(search, budget.label(), 3 if args.smoke else 10)
        known = {key: {**_estimates_measured_before(args.work / "ranking", search).get(key, {}), **values}
                 for key, values in known.items()}
        result["within_budget"] = {"budget": budget.text, **analyze_ranking(
            search, architectures, steps, args.work / "ranking",
            f"the {len(architectures)} best candidates of {budget.text}", known)}
    if args.set in (None, "spread"):
        spread = spread_architectures(search, 3 if args.smoke else 12, args.seed)
        progress = _SpreadProgress(args, search, list(spread))
        result["spread"] = analyze_ranking(
            search, spread, steps, _spread_folder(args),
            f"{len(spread)} random architectures (seed {args.seed}) spread over measured memory",
            {**_estimates_measured_before(_spread_folder(args), search), **progress.record["estimates"]},
            standalone=progress.truth, progress=progress.estimated)
        result["spread"]["progress"] = progress.record
    folders = {"within_budget": args.work / "ranking", "spread": _spread_folder(args)}
    for part in result:
        name = folders[part].name.replace("-", "_")
        shutil.copyfile(folders[part] / "ranking.png", result_path(args, f"hypersegnas_{name}{tag}", ".png"))
    return result


class _SpreadProgress:
    """The random set's estimates and stand-alone runs, written to the results file as each is taken: on ACDC the
    ranking is days of the 2 cores (twelve stand-alone runs of its curve's steps), the work folder does not outlive
    a session, so a later call reads what is recorded for the same architectures, estimator, steps and recipe, and
    trains only the rest (``--truth-recipe defaults``: the ground truth trained as ``segnas train`` trains)."""

    def __init__(self, args: argparse.Namespace, search: HyperSegNASStrategy, keys: list[str]):
        self.args, self.search, self.target = args, search, _result_target(args)
        fresh = json.loads(json.dumps({"architectures": keys, "estimator": search.profile.search_stage(),
                                       "steps": args.steps, "truth_recipe": args.truth_recipe}))
        recorded = (read_result(self.target) if self.target.is_file() else {}).get("spread", {}).get("progress", {})
        same = all(recorded.get(key) == value for key, value in fresh.items())
        self.record = {**fresh, "estimates": recorded.get("estimates", {}) if same else {},
                       "standalone": recorded.get("standalone", {}) if same else {}}

    def _save(self) -> None:
        previous = read_result(self.target) if self.target.is_file() else {}
        write_result(self.target, {**previous, "spread": {**previous.get("spread", {}), "progress": self.record}})

    def estimated(self, estimates: dict[str, dict[str, float]]) -> None:
        self.record["estimates"] = estimates
        self._save()

    def truth(self, key: str, arch: Architecture) -> float:
        if key in self.record["standalone"]:
            return self.record["standalone"][key]["dice"]
        recipe_name = "" if self.args.truth_recipe == "search" else f"-{self.args.truth_recipe}"
        run_dir = _spread_folder(self.args) / "standalone" / f"{self.args.steps}-steps{recipe_name}" / key
        ctx = self.search.ctx
        if self.args.truth_recipe == "search":  # the search's evaluator: its batch, flips (the Hippocampus figures)
            dice = train_standalone(self.search, arch, self.args.steps, run_dir, ctx.seed)["validation"]["val_dice"]
        else:
            recipe = TRAIN_RECIPES[self.args.truth_recipe]
            dice = retrain_and_evaluate(self.args.data, ctx.dataset, ctx.plan, arch, run_dir, smoke=self.args.smoke,
                                        steps=self.args.steps, seed=ctx.seed, config_overrides=recipe["config"],
                                        augment=recipe["augment"])["mean_dice"]
        self.record["standalone"][key] = {"dice": dice}
        self._save()
        return dice


def ranking_noise(args: argparse.Namespace) -> dict:
    """How trustworthy the within-budget ground truth is: the best and the worst ranked architectures trained
    stand-alone again with another seed."""
    search = _search(args, "hypersegnas")
    ranking_dir = args.work / "ranking"
    ranked = json.loads((ranking_dir / "ranking.json").read_text())
    rows = ranked["architectures"]
    arch_of, _ = budget_candidates(search, _budget_at(search, 0.5).label(), len(rows))
    extremes = [max(rows, key=lambda r: r["standalone"]), min(rows, key=lambda r: r["standalone"])]
    reseeded = {}
    for row in extremes:
        record = train_standalone(search, arch_of[row["key"]], ranked["standalone_steps"],
                                  ranking_dir / "reseeded" / row["key"], search.ctx.seed + 1)
        reseeded[row["key"]] = {"seed_0": row["standalone"], "seed_1": record["validation"]["val_dice"]}
    return {"standalone_reseeded": reseeded}


def _standalone_truths(folder: Path, rows: list[dict], steps: int) -> list[float]:
    """Stand-alone validation Dice of each ranked architecture after ``steps`` steps (the ground truth)."""
    truths = []
    for row in rows:
        run_dir = folder / "standalone" / f"{steps}-steps" / row["key"]
        if not (run_dir / "run.json").is_file() or read_run(run_dir).get("status") != "finished":
            raise SystemExit(f"{run_dir}: no finished {steps}-step stand-alone run; "
                             f"run the ranking part with --steps {steps} first")
        truths.append(read_run(run_dir)["validation"]["val_dice"])
    return truths


def ranking_pooled(args: argparse.Namespace) -> dict:
    """Kendall tau of the profile's estimates (and of measured memory) over the random sets of ``--pool``
    taken together: one super-net and one estimator, so more architectures give a tighter figure than any
    single set of twelve. Reads the ranking part's results; trains nothing."""
    seeds = [int(seed) for seed in args.pool.split(",")]
    rows, truths = [], []
    for seed in seeds:
        folder = _spread_folder(argparse.Namespace(work=args.work, seed=seed))
        set_rows = json.loads((folder / "ranking.json").read_text())["architectures"]
        rows += set_rows
        truths += _standalone_truths(folder, set_rows, args.steps)
    return {"seeds": seeds, "architectures": len(rows), "standalone_steps": args.steps,
            "correlations": {field: rank_correlations([row[field] for row in rows], truths)
                             for field in ("supernet", "finetuned", "memory_bytes")}}


def ranking_estimators(args: argparse.Namespace) -> dict:
    """Which fine-tuning ranks best: every architecture of a ranked set (``--set``, after the ranking part)
    fine-tuned with each ``--configs`` entry (learning-rate factor : steps) and scored on the first 12
    validation cases and on all 42, plus the raw super-net on all 42; Kendall tau of each estimate against the
    set's stand-alone Dice after ``--steps`` steps (the ranking part's runs of that length, not whichever
    ``ranking.json`` was written last). Resumes from ``estimators.json`` in the set's folder."""
    search = _search(args, "hypersegnas")
    args.set = args.set or "spread"
    folder = args.work / "ranking" if args.set == "within" else _spread_folder(args)
    rows = json.loads((folder / "ranking.json").read_text())["architectures"]
    truths = _standalone_truths(folder, rows, args.steps)
    if args.set == "within":
        arch_of, _ = budget_candidates(search, _budget_at(search, 0.5).label(), len(rows))
    else:
        arch_of = spread_architectures(search, len(rows), args.seed)
    search.train_supernet()
    every_case = search.evaluator.validation_cases()
    first_twelve = [every_case[i] for i in range(min(12, len(every_case)))]
    path = folder / "estimators.json"
    estimates = json.loads(path.read_text()) if path.is_file() else {}
    for row in rows:
        arch, item = arch_of[row["key"]], estimates.setdefault(row["key"], {})
        if "raw_42" not in item:
            item["raw_42"] = search.score_supernet(arch, every_case)
        for config in args.configs.split(","):
            factor, steps = float(config.split(":")[0]), int(config.split(":")[1])
            name = f"lr{factor:g}_s{steps}"
            if f"{name}_12" in item and f"{name}_42" in item:
                continue
            net = search.finetuned_network(arch, folder / "estimators" / name / row["key"], steps, factor, resume=True)
            item[f"{name}_12"] = search.evaluator.score(net, first_twelve)
            item[f"{name}_42"] = search.evaluator.score(net, every_case)
        path.write_text(json.dumps(estimates, indent=1) + "\n")
    fields = sorted({field for row in rows for field in estimates[row["key"]]})
    return {"set": args.set, "standalone_steps": args.steps, "estimates": estimates,
            "correlations": {field: rank_correlations([estimates[row["key"]][field] for row in rows], truths)
                             for field in fields}}


def _selection_sets(results: Path) -> list[dict]:
    """The recorded ranked sets that have both estimates (``ranking-estimators``) and stand-alone Dice
    (``ranking``): joined where the keys are the same architectures, scored by the same super-net (its raw
    estimate equals the ranking's super-net score) and trained stand-alone for the same steps."""
    rankings = []
    for path in sorted(results.glob("hypersegnas_ranking*.json")):
        if "estimators" not in path.name and "pooled" not in path.name:
            for part, ranked in read_result(path).items():
                if part in ("spread", "within_budget"):
                    rankings.append((path.name, ranked))
    sets, seen = [], set()
    for path in sorted(results.glob("hypersegnas_ranking-estimators_*.json")):
        recorded = read_result(path)
        estimates, steps = recorded["estimates"], recorded.get("standalone_steps", 500)
        for name, ranked in rankings:
            truths = {row["key"]: row for row in ranked["architectures"]}
            if ranked["standalone_steps"] == steps and set(estimates) <= set(truths) and all(
                    abs(truths[key]["supernet"] - item["raw_42"]) < 1e-9 for key, item in estimates.items()):
                identity = (tuple(sorted(estimates)), steps)
                if identity not in seen:
                    seen.add(identity)
                    sets.append({"estimates_file": path.name, "ranking_file": name, "standalone_steps": steps,
                                 "rows": [{**item, "standalone": truths[key]["standalone"]}
                                          for key, item in estimates.items()]})
    return sets


def selection(args: argparse.Namespace) -> dict:
    """Which fine-tuning picks a budget's winner, for how many steps: on every recorded set with stand-alone Dice,
    every subset of ``--pick-from`` architectures (the cpu-light profile fine-tunes 4 per budget: the super-net's
    top 3 and the U-Net preset) stands for one budget's finalists. A policy fine-tunes them all with one
    estimator, or screens them all with a shorter one and fine-tunes the best two with a longer one. Per
    policy: fine-tuning steps per budget, and the stand-alone Dice its pick loses against the subset's best
    network (regret) and against the profile's 1,000-step pick; no training (the recorded figures are joined)."""
    sets = _selection_sets(args.results)
    if not sets:
        raise SystemExit(f"{args.results}: no ranked set has both estimates and stand-alone Dice; run the ranking "
                         "and ranking-estimators parts first")

    def steps_of(field: str) -> int:
        return 0 if field.startswith("raw") else int(re.search(r"_s(\d+)_", field).group(1))

    rows = []
    for ranked in sets:
        fields = sorted({f for f in ranked["rows"][0] if f.endswith("_42") and f.startswith(("raw", "lr1_"))},
                        key=steps_of)
        # screening keeps the best two: keeping one would pick what the screen alone picks
        policies = [(None, 0, f) for f in fields] + [(screen, 2, final) for screen, final in
                                                       itertools.combinations(fields, 2)]
        subsets = list(itertools.combinations(ranked["rows"], args.pick_from))
        best = [max(r["standalone"] for r in subset) for subset in subsets]
        profile = ([max(subset, key=lambda r: r["lr1_s1000_42"])["standalone"] for subset in subsets]
                   if "lr1_s1000_42" in fields else [])
        for screen, keep, final in policies:
            picks = [max(sorted(subset, key=lambda r: -r[screen])[:keep] if screen else subset,
                         key=lambda r: r[final])["standalone"] for subset in subsets]
            regrets = [top - pick for top, pick in zip(best, picks)]
            versus_profile = [chosen - pick for chosen, pick in zip(profile, picks)]
            steps = (args.pick_from * steps_of(screen) + keep * steps_of(final)) if screen \
                else args.pick_from * steps_of(final)
            rows.append({"set": ranked["estimates_file"], "standalone_steps": ranked["standalone_steps"],
                         "policy": f"{screen} -> best {keep} -> {final}" if screen else final,
                         "finetune_steps_per_budget": steps, "regret_mean": statistics.mean(regrets),
                         "regret_worst": max(regrets),
                         **({"loss_against_profile_mean": statistics.mean(versus_profile),
                             "same_pick_as_profile": sum(v == 0 for v in versus_profile) / len(versus_profile)}
                            if versus_profile else {})})
            print(f"{ranked['estimates_file']:<60} {rows[-1]['policy']:<40} {steps:5d} steps, regret "
                  f"{rows[-1]['regret_mean']:.4f} (worst {rows[-1]['regret_worst']:.4f})"
                  + (f", against 1,000 steps {rows[-1]['loss_against_profile_mean']:+.4f}" if versus_profile else ""))
    return {"pick_from": args.pick_from, "sets": [{k: v for k, v in s.items() if k != "rows"} | {"architectures":
            len(s["rows"])} for s in sets], "policies": rows}


def _result_target(args: argparse.Namespace) -> Path:
    """The results file of the part ``args`` runs (its set, seed and steps in the name)."""
    suffix = ("_noretrain" if args.part == "search" and args.skip_retrain else "") \
        + (f"_{args.set}" if args.part.startswith("ranking") and args.set else "") \
        + (f"_seed{args.seed}" if args.part.startswith("ranking") and args.part != "ranking-pooled"
           and args.seed != 2024 else "") \
        + (f"_steps{args.steps}" if args.part.startswith("ranking") and args.steps != 500 and not args.smoke else "") \
        + (f"_truth-{args.truth_recipe}" if args.part == "ranking" and args.truth_recipe != "search" else "")
    return result_path(args, f"hypersegnas_{args.part}{suffix}")


def main() -> None:
    parser = benchmark_parser(__doc__, ["ablation", "search", "ranking", "ranking-noise", "ranking-estimators",
                                                 "ranking-pooled", "selection"],
                              "hypersegnas", subjects=True)
    parser.add_argument("--steps", type=int, default=500, help="stand-alone steps per ranked architecture (500)")
    parser.add_argument("--set", choices=["within", "spread"], default=None,
                        help="ranking: only this set (both); ranking-estimators: which set (spread)")
    parser.add_argument("--configs", default="0.1:60,1:60,0.1:300,1:300",
                        help="ranking-estimators: fine-tunings as lr-factor:steps, comma-separated")
    parser.add_argument("--seed", type=int, default=2024,
                        help="ranking, ranking-estimators: seed of the random architecture set (2024)")
    parser.add_argument("--pool", default="2024,2025,2026",
                        help="ranking-pooled: seeds of the random sets to rank together (2024,2025,2026)")
    parser.add_argument("--truth-recipe", choices=["search", *sorted(TRAIN_RECIPES)], default="search",
                        help="ranking: how the random set's ground truth trains: search (the search's evaluator: "
                             "its batch, flips; the Hippocampus figures) or a benchmark recipe (defaults: segnas "
                             "train's, for ACDC)")
    parser.add_argument("--skip-retrain", action="store_true", help="search part: stop after choosing the winners")
    parser.add_argument("--pick-from", type=int, default=4,
                        help="selection: architectures fine-tuned per budget (4: cpu-light's top 3 and the preset)")
    args = parser.parse_args()
    torch.set_flush_denormal(True)
    args.results.mkdir(parents=True, exist_ok=True)
    if args.smoke:
        args.minutes, args.configs, args.steps = 0.05, "1:2", 2
    parts = {"ablation": ablation, "search": search_budgets, "ranking": ranking, "ranking-noise": ranking_noise,
             "ranking-estimators": ranking_estimators, "ranking-pooled": ranking_pooled, "selection": selection}
    result = parts[args.part](args)
    target = _result_target(args)
    write_result(target, result)
    print(json.dumps(result, indent=1, default=str))
    print(f"results: {target}")


if __name__ == "__main__":
    main()

"""The ``segnas`` command: one subcommand per stage of the pipeline.

``demo`` runs everything on synthetic data; ``download``, ``plan``, ``arch``, ``cost``, ``train``,
``search``, ``analyze``, ``predict``, ``export`` and ``evaluate`` are the stages a user runs on a real dataset. Every
input problem ends with ``segnas: error: <file>: <problem>`` and exit status 2, and no partial output.

The commands parse their arguments, call :mod:`segnas.api` and print; the work happens in the library.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any, NoReturn, Sequence

from segnas.errors import SegnasInputError
from segnas.utils.progress import configure_logging

EXIT_INPUT_ERROR = 2
#: The exit status when the machine refused (disk full, folder not writable).
EXIT_OS_ERROR = 1


# ----- shared option groups ----------------------------------------------------------------------------------
def _add_space_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("search space")
    group.add_argument("--blocks", type=int, default=12, help="L, blocks of the topology space (default 12)")
    group.add_argument("--depths", type=int, default=4, help="D, scales of the topology space (default 4)")
    group.add_argument("--base-channels", type=int, default=32, help="stem channels before --channel-mul (32)")
    group.add_argument("--channel-mul", type=float, default=0.5,
                       help="multiplier of all channels; 0.5 gives grid channels 32..256 as in the papers (0.5)")
    group.add_argument("--no-stem-downsample", action="store_true",
                       help="keep the grid's finest scale at full resolution (default: the stem halves it)")
    group.add_argument("--ops", choices=["hypersegnas", "dints"], default="hypersegnas",
                       help="operation set: hypersegnas = {skip, conv3x3x3}; dints adds 3 pseudo-3D convs")


def _space_from_args(args: argparse.Namespace):
    from segnas.spaces.topology import TopologySpace

    return TopologySpace.named(args.ops, num_blocks=args.blocks, num_depths=args.depths,
                               base_channels=args.base_channels, channel_mul=args.channel_mul,
                               stem_downsample=not args.no_stem_downsample)


def _add_network_options(parser: argparse.ArgumentParser, required: bool = True) -> None:
    from segnas.networks.registry import list_networks, network_class

    group = parser.add_argument_group("network (one of)")
    choice = group.add_mutually_exclusive_group(required=required)
    choice.add_argument("--arch", type=Path, help="architecture JSON (topology space, or cells in a host network)")
    baselines = list_networks(baselines_only=True)
    choice.add_argument("--net", choices=baselines, help="hand-designed baseline: " + "; ".join(
        f"{kind} = {network_class(kind).summary}" for kind in baselines))
    group.add_argument("--merge", choices=["sum", "mean"], default="mean",
                       help="topology networks: how edges meeting at a node combine; mean = HyperSegNAS's "
                            "'summed and normalised', sum = MONAI DiNTS (default mean)")


def _network_choice(args: argparse.Namespace):
    """The ``--arch`` architecture (validated) or the ``--net`` kind."""
    from segnas.api import load_architecture

    return load_architecture(args.arch) if args.arch is not None else args.net


def _add_amp_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-amp", action="store_true",
                        help="float32 throughout (default: mixed precision where the device runs it natively: "
                             "float16 on CUDA, bfloat16 on a CPU with AVX-512 BF16 or AMX)")


def _add_tta_option(parser: argparse.ArgumentParser) -> None:
    """``--tta``; unset, the API's default decides (``DEFAULT_TTA`` in segnas.engine.inference, which the CLI does
    not import before a command runs: ``segnas --help`` stays free of torch)."""
    parser.add_argument("--tta", choices=["none", "flips"],
                        help="test-time augmentation: flips averages the 8 mirrorings of the axes, as nnU-Net "
                             "(default); none predicts once, about 8x faster")


def _tta(args: argparse.Namespace) -> dict[str, str]:
    return {"tta": args.tta} if args.tta else {}


def _add_run_options(parser: argparse.ArgumentParser, what: str) -> None:
    """Seed, device, resume and force: the options of every command that makes a resumable folder."""
    parser.add_argument("--seed", type=int, default=0, help="seed (0)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda (auto)")
    parser.add_argument("--resume", action="store_true", help=f"continue the {what} in --out where it stopped")
    parser.add_argument("--force", action="store_true", help=f"overwrite an existing {what} folder")


# ----- commands ----------------------------------------------------------------------------------------------
def cmd_download(args: argparse.Namespace) -> int:
    from segnas.data.download import download_msd

    print(f"downloaded to {download_msd(args.task, args.out)}")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from segnas.api import plan_dataset
    from segnas.data.dataset import load_dataset
    from segnas.utils.files import check_output_dir

    spec = load_dataset(args.data_dir)
    out = Path(args.out or Path("segnas_plans") / spec.name)
    check_output_dir(out, args.force, "plan folder")  # refuse before the scan
    plan = plan_dataset(args.data_dir, out, stride=args.stride, max_patch_voxels=args.max_patch_voxels,
                        folds=args.folds, force=args.force, group_by=args.group_by, isotropic=args.isotropic)
    grouped = f" (--group-by '{plan.group_by}')" if plan.group_by else ""
    print(f"dataset {spec.name}: {len(spec.cases)} cases from {len(plan.subjects)} subjects{grouped}, "
          f"{spec.num_channels} channel(s), "
          f"labels {spec.labels}")
    print(f"target spacing {[round(s, 4) for s in plan.target_spacing]}, patch {plan.patch_size}, stride per axis "
          f"{plan.stride} (pooling per level {plan.pool_strides}), "
          f"normalisation {[n['scheme'] for n in plan.normalisation]}, {len(plan.folds)} folds")
    sizes = [f"{len(f['val'])}" for f in plan.folds]
    print(f"validation cases per fold: {', '.join(sizes)}; no subject on both sides of any fold")
    for label, count in plan.fingerprint.get("cases_without_label", {}).items():
        print(f"note: label {label} ({plan.labels.get(int(label), '?')}) is absent from {count} of "
              f"{len(spec.cases)} cases")
    print(f"plan written to {out / 'plan.json'}")
    return 0


def _pooling_line(per_level: list | None, total: list[int]) -> str:
    """``segnas arch show``'s pooling line: per-level strides (``None``: every axis halved) and the total."""
    pooling = "every axis halved per level" if per_level is None else f"per level {per_level}"
    return f"pooling: {pooling}; total stride {total}"


def cmd_arch(args: argparse.Namespace) -> int:
    from segnas.report.draw import draw_architecture
    from segnas.spaces.architecture import load_architecture
    from segnas.spaces.cells import CellArchitecture
    from segnas.spaces.presets import PRESETS
    from segnas.spaces.sampler import ArchitectureSampler

    if args.arch_command in ("validate", "show"):
        arch = load_architecture(args.file)
    if args.arch_command == "validate" and isinstance(arch, CellArchitecture):
        from segnas.networks.registry import cell_network

        try:  # the network kind's own checks (a U-Net of cells needs every cell type, ...)
            cell_network(arch)
        except SegnasInputError as err:
            raise SegnasInputError(str(err), args.file) from err
        print(f"{args.file}: valid, cells {sorted(arch.cells)} of {arch.space.nodes} nodes in a "
              f"{arch.host['kind']} host")
        return 0
    if args.arch_command == "validate":
        print(f"{args.file}: valid, {int(arch.edges.sum())} active edges in {arch.space.num_blocks} blocks")
        return 0
    if args.arch_command == "show" and isinstance(arch, CellArchitecture):
        from segnas.networks.registry import cell_network

        strides = arch.host.get("strides")  # (a UNet host's are integers while every axis is halved)
        per_level = None if strides is None or all(isinstance(f, int) for f in strides) else strides
        print(f"space: {arch.space.to_dict()}\nhost: {arch.host}\n"
              f"{_pooling_line(per_level, cell_network(arch).stride())}\n{arch.summary()}")
    elif args.arch_command == "show":
        space = arch.space
        per_level = None if space.strides is None else [list(level) for level in space.level_strides]
        print(f"space: {space.to_dict()}\n{_pooling_line(per_level, space.axis_stride)}")
        for block in range(space.num_blocks):
            edges = [f"{space.edge_name(e)}:{space.ops[arch.ops[block, e]]}" for e in arch.edges[block].nonzero()[0]]
            print(f"block {block:2d}: " + ", ".join(edges))
        node_a, code_a, code_c = arch.to_monai_codes()
        print(f"MONAI node_a: {node_a.tolist()}\nMONAI arch_code_a: {code_a.astype(int).tolist()}\n"
              f"MONAI arch_code_c: {code_c.tolist()}")
    if args.arch_command == "show":
        if args.png:
            print(f"drawing: {draw_architecture(arch, args.png)}")
        return 0
    space = _space_from_args(args)
    if args.arch_command == "preset":
        arch = PRESETS[args.name](space)
        targets = [(arch, args.out)]
    else:
        sampler = ArchitectureSampler(space, args.seed)
        out = Path(args.out)
        if args.count == 1 and out.suffix == ".json":
            targets = [(sampler.sample(), out)]
        else:
            targets = [(sampler.sample(), out / f"arch_{i:03d}.json") for i in range(args.count)]
    for _, path in targets:  # refuse before writing anything
        if Path(path).exists() and not args.force:
            raise SegnasInputError("file exists; pass --force to overwrite it", path)
    for arch, path in targets:
        path = Path(path)
        if args.arch_command == "sample":
            arch.metadata["sampler_seed"] = args.seed
        arch.save(path)
        draw_architecture(arch, path.with_suffix(".png"))
        print(f"{path} (+ {path.with_suffix('.png').name})")
    return 0


def cmd_cost(args: argparse.Namespace) -> int:
    from segnas.api import measure_cost, network_for
    from segnas.data.plan import Plan
    from segnas.engine.run import check_patch
    from segnas.utils.runtime import configure_torch, pick_device

    configure_torch()
    plan = Plan.load(args.plan) if args.plan else None
    patch = args.patch or (plan.patch_size if plan else None)
    if patch is None:
        raise SegnasInputError("give --patch X Y Z or --plan PLAN", "--patch")
    network = network_for(_network_choice(args), plan, args.merge, args.in_channels, args.out_channels, patch)
    check_patch(patch, network.stride())
    report = measure_cost(network, patch, args.batch, pick_device(args.device), use_cache=not args.no_cache,
                          amp=not args.no_amp)
    if args.json:
        print(json.dumps(report.to_dict(), indent=1))
    else:
        print(f"parameters        {report.parameters:,}")
        print(f"forward FLOPs     {report.flops_forward / 1e9:.2f} G (batch {report.batch_size}, patch {patch})")
        print(f"training memory   {report.memory_bytes / 2**20:.1f} MiB ({report.memory_method})")
        print(f"latency           {report.latency_ms:.1f} ms per forward of the batch")
        print(f"training step     {report.seconds_per_step:.3f} s on {report.device}")
        print(f"precision         {report.precision} (as segnas train{' --no-amp' if args.no_amp else ''} runs it)")
    return 0


#: The last validation's metrics as ``segnas train`` prints them: name, record key, digits.
VALIDATION_METRICS = (("Dice", "dice", 3), ("NSD 1 mm", "nsd", 3), ("HD95 mm", "hd95", 1))


def validation_lines(validation: dict[str, Any]) -> list[str]:
    """A run's last validation, one line per metric with the structures beside the mean, e.g.
    ``validation Dice 0.747 (RV 0.676, MYO 0.722, LV 0.842)``; a run without validation cases says so."""
    lines = []
    for title, metric, digits in VALIDATION_METRICS:
        if f"val_{metric}" not in validation:
            continue
        structures = ", ".join(f"{key.split('/', 1)[1]} {value:.{digits}f}" for key, value in validation.items()
                               if key.startswith(f"val_{metric}/"))
        lines.append(f"validation {title} {validation[f'val_{metric}']:.{digits}f} ({structures})")
    return lines or ["no validation cases (the fold trains on every case)"]


def cmd_train(args: argparse.Namespace) -> int:
    from segnas.api import train
    from segnas.utils.distributed import is_main

    record = train(args.data_dir, _network_choice(args), args.out, plan=args.plan, fold=args.fold, steps=args.steps,
                   minutes=args.minutes, batch_size=args.batch, optimizer=args.optimizer, lr=args.lr,
                   augment=args.augment, seed=args.seed, device=args.device, resume=args.resume, force=args.force,
                   merge=args.merge, patch=args.patch, stride=args.stride, group_by=args.group_by,
                   val_every=args.val_every,
                   checkpoint_every=args.checkpoint_every, workers=args.workers, amp=not args.no_amp,
                   foreground=args.foreground)
    if is_main():
        print(f"trained {record['steps']} steps in {record['train_seconds']} s")
        for line in validation_lines(record["validation"]):
            print(line)
        print(f"run folder: {args.out}")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from segnas.api import get_strategy, search
    from segnas.utils.distributed import is_main

    strategy_cls = get_strategy(args.strategy)
    options = {option.dest: getattr(args, option.dest) for option in _strategy_options()}
    strategy = strategy_cls(args.profile, options)
    results = search(args.data_dir, args.out, strategy, args.budget or [], fold=args.fold, seed=args.seed,
                     device=args.device, resume=args.resume, force=args.force, patch=args.patch,
                     group_by=args.group_by)
    if is_main():
        for label, arch in results.items():
            print(strategy.describe(label, arch))
        print(f"search folder: {args.out}")
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    from segnas.api import open_search
    from segnas.cost.budget import parse_budget
    from segnas.spaces.architecture import Architecture
    from segnas.spaces.presets import unet_architecture
    from segnas.strategies.hypersegnas.analysis import (analyze_hypernet, analyze_ranking, budget_candidates,
                                                        spread_architectures)

    out = args.out or args.search_dir / "analysis"
    search = open_search(args.search_dir, args.device)
    search.check_analysis(args.analysis)
    if args.analysis == "ranking":
        if args.budget:
            architectures, known = budget_candidates(search, parse_budget(args.budget).label(), args.count)
            selection = f"the {len(architectures)} best super-net scores among the candidates of {args.budget}"
        else:
            architectures, known = spread_architectures(search, args.random, args.seed), {}
            selection = (f"{len(architectures)} architectures drawn at random (seed {args.seed}), "
                         "spread over measured memory")
        result = analyze_ranking(search, architectures, args.steps, out, selection, known)
        for field in ("supernet", "finetuned"):
            print(f"{field:9s}: Kendall tau {result[field]['kendall_tau']:.3f}, "
                  f"Spearman rho {result[field]['spearman_rho']:.3f} over {len(result['architectures'])} architectures")
        print(f"-> {out / 'ranking.json'}, {out / 'ranking.png'}")
        return 0
    winners = sorted(args.search_dir.glob("budget-*/arch.json"))
    arch_a = Architecture.load(args.arch_a) if args.arch_a else (Architecture.load(winners[0]) if winners else None)
    if arch_a is None:
        raise SegnasInputError("no searched architecture found; give --arch-a", args.search_dir)
    arch_b = Architecture.load(args.arch_b) if args.arch_b else (
        Architecture.load(winners[1]) if len(winners) > 1 else unet_architecture(arch_a.space))
    summary = analyze_hypernet(search, args.image, args.label, arch_a, arch_b, out, args.stride)
    print(json.dumps(summary, indent=1))
    print(f"-> {out / 'hypernet.png'}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from segnas.api import predict

    written = predict(args.run_dir, args.input, args.output, overlap=args.overlap, device=args.device,
                      force=args.force, amp=not args.no_amp, postprocess=not args.no_postprocess, **_tta(args))
    print(f"wrote {len(written)} mask(s) to {args.output}")
    return 0


def cmd_postprocess(args: argparse.Namespace) -> int:
    from segnas.api import postprocess

    decision = postprocess(args.run_dir, args.predictions, force=args.force, device=args.device, **_tta(args))
    labels = ", ".join(f"{name} {'yes' if decision['labels'][str(value)] else 'no'}"
                       for value, name in enumerate(decision["dice_before"], start=1))
    print(f"largest connected component, decided on {decision['cases']} validation cases: "
          f"foreground {'yes' if decision['foreground'] else 'no'}; {labels}")
    for name, before in decision["dice_before"].items():
        print(f"  {name}: Dice {before:.4f} -> {decision['dice_after'][name]:.4f}")
    print(f"saved in {args.run_dir / 'postprocessing.json'}; segnas predict applies it (--no-postprocess skips it)")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from segnas.api import export

    model = export(args.run_dir, args.out, args.format, args.force)
    print(f"exported {model} (checked against the network); bundle: {args.out}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from segnas.api import report

    path = report(args.search_dir, args.out, args.runs or (), args.force, args.device)
    print(f"wrote {path} (open it in a browser; it needs no network access)")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from segnas.api import evaluate

    summary = evaluate(args.pred_dir, args.labels, args.out, args.dataset_json, args.nsd_tolerance)
    print(json.dumps(summary, indent=1))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from segnas.cli.demo import run_demo

    run_demo(Path(args.out), force=args.force, steps=args.steps, device=args.device, strategy=args.strategy)
    return 0


# ----- parser ------------------------------------------------------------------------------------------------
def _strategy_options() -> list:
    """Every registered strategy's options, each flag once (two strategies may share one)."""
    from segnas.api import get_strategy, list_strategies

    seen: dict[str, object] = {}
    for name in list_strategies():
        for option in get_strategy(name).options:
            seen.setdefault(option.flag, option)
    return list(seen.values())


def _add_search_parser(commands: argparse._SubParsersAction) -> None:
    """``segnas search``: strategies, profiles and their options all come from the strategy registry."""
    from segnas.api import get_strategy, list_strategies
    from segnas.strategies.base import format_help_default

    names = list_strategies()
    strategies = {name: get_strategy(name) for name in names}
    profiles = sorted({profile for cls in strategies.values() for profile in cls.profiles})
    listing = "\n".join(f"  {name:12s} {cls.summary}; {cls.budget_words()}" for name, cls in strategies.items())
    search = commands.add_parser(
        "search", parents=[QUIET, THREADS], help="search architectures under compute budgets (" + ", ".join(names) + ")",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Search a space for architectures under compute budgets with one of the strategies below; "
                    "writes per budget LABEL/arch.json (the winner, its measured cost and the search's facts), "
                    "LABEL/arch.png and, where the strategy compares candidates, LABEL/leaderboard.csv.\n\n"
                    "strategies:\n" + listing)
    search.add_argument("data_dir", type=Path, help="MSD task folder or nnU-Net v2 raw dataset folder")
    search.add_argument("--strategy", choices=names, default="hypersegnas", help="search method (hypersegnas)")
    search.add_argument("--budget", action="append",
                        help="repeatable: memory (4GB, 800MB), parameters (2Mparams), FLOPs (20GFLOPs), "
                             "latency (150ms) or training step time (1.2s/step), or limits joined by + "
                             "(250MiB+1.2s/step: the first is spent, the others are ceilings); each strategy "
                             "names the kinds it spends")
    search.add_argument("--out", type=Path, required=True, help="search folder")
    search.add_argument("--profile", choices=profiles, default="cpu",
                        help="sizes: paper (GPU, the paper's settings), cpu (about an hour on 2 cores), tiny (tests)")
    search.add_argument("--fold", type=int, default=0, help="fold (0)")
    search.add_argument("--group-by", metavar="REGEX",
                        help="the regular expression naming each case's subject (see segnas plan): the search "
                             "never validates on a subject it trained on (ACDC: 'patient\\d+')")
    search.add_argument("--patch", type=int, nargs=3, metavar=("X", "Y", "Z"),
                        help="search at this patch instead of the plan's (or the profile's): the patch you will "
                             "train at, so that every budget is measured where training meets it; each side a "
                             "multiple of the space's stride on its axis")
    _add_run_options(search, "search")
    groups: dict[str, argparse._ArgumentGroup] = {}
    for option in _strategy_options():
        users = ", ".join(name for name, cls in strategies.items() if option in cls.options)
        group = groups.setdefault(users, search.add_argument_group(f"{users} options"))
        kwargs = {"action": "append"} if option.repeatable else {}
        group.add_argument(option.flag, type=option.type, choices=option.choices,
                           help=option.help + format_help_default(option.default), **kwargs)
    search.set_defaults(func=cmd_search)


def _fold(text: str) -> int | str:
    """``--fold``: a fold's number or ``all``."""
    if text == "all":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a fold number or 'all', got {text!r}") from None


#: ``--quiet``, taken before or after the command: no progress bars or lines, warnings and errors only.
class SegnasArgumentParser(argparse.ArgumentParser):
    """argparse with segnas's error line: ``segnas: error: --steps: invalid int value: 'abc' (see segnas train
    --help)`` and exit status 2, like every other refused input (subcommand parsers inherit the class)."""

    def error(self, message: str) -> NoReturn:
        message = re.sub(r"^argument ([^:]+): ", r"\1: ", message)
        self.exit(EXIT_INPUT_ERROR, f"segnas: error: {message} (see '{self.prog} --help')\n")


QUIET = argparse.ArgumentParser(add_help=False)
QUIET.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS,
                   help="no progress bars or progress lines, only warnings and errors")


#: ``--threads``, on the commands that compute.
THREADS = argparse.ArgumentParser(add_help=False)
THREADS.add_argument("--threads", type=int, metavar="N",
                     help="CPU threads for torch (default: the cores this process may use, shared among torchrun "
                          "processes). Do not run two segnas processes on the same cores: oversubscribed threads "
                          "slow 3D convolution on CPU many times over (README, 'Long runs')")


def build_parser() -> argparse.ArgumentParser:
    parser = SegnasArgumentParser(prog="segnas", description=__doc__, parents=[QUIET],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    from segnas.version import __version__

    parser.add_argument("--version", action="version", version=f"segnas {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser("demo", parents=[QUIET, THREADS],
                               help="the whole job on synthetic data: search, retrain, predict, evaluate "
                                    "(under a minute on 2 CPU cores)",
                               description="Write a synthetic MSD dataset, search it with a strategy's tiny "
                                           "profile under two budgets, print the budget table, retrain the "
                                           "winner, predict and evaluate; prints where everything went.")
    demo.add_argument("--out", default="segnas_demo", help="folder for everything the demo writes (segnas_demo)")
    demo.add_argument("--steps", type=int, default=300, help="training steps of the winner's retraining (300)")
    from segnas.api import list_strategies

    demo.add_argument("--strategy", default="hypersegnas", choices=list_strategies(),
                      help="the strategy whose tiny profile searches (hypersegnas)")
    demo.add_argument("--device", default="auto", help="auto, cpu or cuda (auto)")
    demo.add_argument("--force", action="store_true", help="overwrite an earlier demo folder")
    demo.set_defaults(func=cmd_demo)

    download = commands.add_parser("download", parents=[QUIET], help="download an MSD task (needs internet)",
                                   description="Download a Medical Segmentation Decathlon task with MONAI.")
    download.add_argument("task", help="e.g. Task04_Hippocampus")
    download.add_argument("--out", default="data", help="folder to put the task folder in (data)")
    download.set_defaults(func=cmd_download)

    plan = commands.add_parser("plan", parents=[QUIET, THREADS], help="validate a dataset, fingerprint it and write its plan",
                               description="Check every case, compute the dataset fingerprint and derive spacing, "
                                           "patch size, normalisation and 5 folds (nnU-Net's rules).")
    plan.add_argument("data_dir", type=Path, help="MSD task folder or nnU-Net v2 raw dataset folder")
    plan.add_argument("--out", type=Path, help="plan folder (default segnas_plans/<dataset name>)")
    plan.add_argument("--stride", type=int, default=16,
                      help="total stride of the finest axes, a power of two (16: four poolings); coarser axes "
                           "are pooled fewer times, as nnU-Net plans thick slices")
    plan.add_argument("--isotropic", action="store_true",
                      help="pool every axis at every level whatever the spacing (the plans of segnas < 0.2)")
    plan.add_argument("--group-by", metavar="REGEX",
                      help="regular expression whose match (or first group) in a case id names its subject; "
                           "a subject's cases stay on one side of every fold (ACDC: 'patient\\d+')")
    plan.add_argument("--max-patch-voxels", type=int, default=320_000,
                      help="largest patch volume (320000: sized for CPU step time; 2097152, nnU-Net's 128^3, "
                           "on a GPU)")
    plan.add_argument("--folds", type=int, default=5, help="number of folds (5)")
    plan.add_argument("--force", action="store_true", help="overwrite an existing plan folder")
    plan.set_defaults(func=cmd_plan)

    arch = commands.add_parser("arch", parents=[QUIET], help="architectures of the topology space: sample, preset, show, validate",
                               description="Create, inspect and check architecture JSON files.")
    arch_commands = arch.add_subparsers(dest="arch_command", required=True, metavar="ARCH_COMMAND")
    sample = arch_commands.add_parser("sample", parents=[QUIET], help="uniformly sample feasible architectures (seeded)")
    _add_space_options(sample)
    sample.add_argument("--seed", type=int, default=0, help="random seed (0)")
    sample.add_argument("--count", type=int, default=1, help="how many (1)")
    sample.add_argument("--out", required=True, help="FILE.json for one architecture, else a folder")
    sample.add_argument("--force", action="store_true", help="overwrite existing files")
    preset = arch_commands.add_parser("preset", parents=[QUIET], help="a hand-designed architecture written in the space")
    preset.add_argument("name", choices=["unet"], help="unet: encoder-decoder with skip connections")
    _add_space_options(preset)
    preset.add_argument("--out", required=True, help="FILE.json")
    preset.add_argument("--force", action="store_true", help="overwrite an existing file")
    show = arch_commands.add_parser("show", parents=[QUIET], help="print an architecture, its MONAI codes, and draw it")
    show.add_argument("file", type=Path)
    show.add_argument("--png", type=Path, help="also draw it to this PNG")
    validate = arch_commands.add_parser("validate", parents=[QUIET], help="check an architecture file; explains infeasibility")
    validate.add_argument("file", type=Path)
    arch.set_defaults(func=cmd_arch)

    cost = commands.add_parser("cost", parents=[QUIET, THREADS], help="parameters, FLOPs, measured training memory and latency",
                               description="Measure a network's cost over a few real training steps (cached).")
    _add_network_options(cost)
    cost.add_argument("--patch", type=int, nargs=3, metavar=("X", "Y", "Z"), help="patch size")
    cost.add_argument("--batch", type=int, default=2, help="batch size (2)")
    cost.add_argument("--plan", type=Path, help="take patch and channels from this plan")
    cost.add_argument("--in-channels", type=int, help="image channels (plan's, else 1)")
    cost.add_argument("--out-channels", type=int, help="classes with background (plan's, else 2)")
    cost.add_argument("--device", default="cpu", help="cpu or cuda (cpu)")
    cost.add_argument("--no-cache", action="store_true", help="measure again even if cached")
    _add_amp_option(cost)
    cost.add_argument("--json", action="store_true", help="print JSON")
    cost.set_defaults(func=cmd_cost)

    train = commands.add_parser("train", parents=[QUIET, THREADS], help="train a network on one fold (resumable)",
                                description="Train an architecture or a baseline on one fold of a dataset.")
    train.add_argument("data_dir", type=Path, help="MSD task folder or nnU-Net v2 raw dataset folder")
    _add_network_options(train)
    train.add_argument("--out", type=Path, required=True, help="run folder")
    train.add_argument("--fold", type=_fold, default=0,
                       help="fold (0), or 'all': every case, no validation split (the final model to ship)")
    train.add_argument("--plan", type=Path, help="plan.json (default: plan the dataset now)")
    train.add_argument("--stride", type=int,
                       help="patch sides' multiple when planning now (default: the architecture's total stride, "
                            "16 for baselines)")
    train.add_argument("--group-by", metavar="REGEX",
                       help="when planning now: the regular expression naming each case's subject (see segnas plan)")
    train.add_argument("--patch", type=int, nargs=3, metavar=("X", "Y", "Z"), help="override the plan's patch")
    train.add_argument("--steps", type=int, help="training steps (1000 unless --minutes is given; with both, "
                       "whichever ends first)")
    train.add_argument("--minutes", type=float, help="training time; alone, it ends training by itself")
    train.add_argument("--batch", type=int, default=2, help="batch size (2)")
    train.add_argument("--optimizer", choices=["adamw", "sgd"], default="adamw", help="(adamw)")
    train.add_argument("--lr", type=float, default=3e-3, help="initial learning rate, poly decay (3e-3)")
    train.add_argument("--augment", choices=["full", "full-3d", "flips", "none"], default="full",
                       help="augmentation (full: flips, rotation and scaling, within the slices on thick-slice "
                            "data; full-3d: rotation about every axis whatever the spacing)")
    train.add_argument("--val-every", type=int, default=0, help="validate every N steps; 0 = only at the end")
    train.add_argument("--checkpoint-every", type=int, default=100, help="checkpoint every N steps (100)")
    train.add_argument("--workers", type=int, default=0, help="batch-loading processes (0)")
    train.add_argument("--foreground", type=float, default=0.5,
                       help="share of training patches centred on a foreground voxel (0.5; nnU-Net: 0.33)")
    _add_amp_option(train)
    _add_run_options(train, "run")
    train.set_defaults(func=cmd_train)

    _add_search_parser(commands)

    analyze = commands.add_parser("analyze", parents=[QUIET], help="analyses of a search: ranking quality, HyperNet behaviour",
                                  description="Analyses of a search folder, by the strategy that wrote it "
                                              "(HyperSegNAS: paper Fig. 4 and Fig. 6). A folder whose strategy "
                                              "does not offer an analysis is refused with the ones it offers.")
    analyses = analyze.add_subparsers(dest="analysis", required=True, metavar="ANALYSIS")
    ranking = analyses.add_parser("ranking", parents=[QUIET, THREADS], help="Kendall tau / Spearman of super-net estimates vs trained nets",
                                  description="Train candidates of one budget stand-alone through the one trainer "
                                              "and correlate the super-net's raw and fine-tuned estimates with them.")
    ranking.add_argument("search_dir", type=Path)
    chosen = ranking.add_mutually_exclusive_group(required=True)
    chosen.add_argument("--budget", help="rank this searched budget's candidates (as given to segnas search)")
    chosen.add_argument("--random", type=int, metavar="N",
                        help="rank N architectures drawn at random from the space, spread over measured memory")
    ranking.add_argument("--count", type=int, default=10, help="with --budget: how many candidates (10)")
    ranking.add_argument("--seed", type=int, default=0, help="with --random: seed of the draw (0)")
    ranking.add_argument("--steps", type=int, default=300, help="training steps of each stand-alone run (300)")
    hypernet = analyses.add_parser("hypernet", parents=[QUIET, THREADS], help="the paper's Eq. 6 and Eq. 7 over one volume, as a picture",
                                   description="HyperNet weight changes across the patches of one volume (Eq. 6) "
                                               "and between two architectures (Eq. 7), beside the label.")
    hypernet.add_argument("search_dir", type=Path)
    hypernet.add_argument("--image", type=Path, required=True, help="a NIfTI image")
    hypernet.add_argument("--label", type=Path, help="its label, drawn beside the maps")
    hypernet.add_argument("--arch-a", type=Path, help="a_i (default: the first budget's winner)")
    hypernet.add_argument("--arch-b", type=Path, help="a_j (default: the second budget's winner, else the U-Net)")
    hypernet.add_argument("--stride", type=int, default=16, help="patch stride (16, as the paper)")
    for parser_ in (ranking, hypernet):
        parser_.add_argument("--out", type=Path, help="output folder (default SEARCH_DIR/analysis)")
        parser_.add_argument("--device", default="auto", help="auto, cpu or cuda (auto)")
    analyze.set_defaults(func=cmd_analyze)

    predict = commands.add_parser("predict", parents=[QUIET, THREADS], help="segment NIfTI images with a trained run",
                                  description="Write one NIfTI mask per case, with the input's shape and affine.")
    predict.add_argument("run_dir", type=Path, nargs="+",
                         help="run folder from segnas train, or a bundle from segnas export; several (e.g. the five "
                              "folds) make an ensemble that averages their softmax outputs")
    predict.add_argument("--input", type=Path, required=True, help="an image file or a folder of images")
    predict.add_argument("--output", type=Path, required=True, help="folder for the masks")
    predict.add_argument("--overlap", type=float, default=0.5, help="sliding-window overlap (0.5)")
    _add_tta_option(predict)
    predict.add_argument("--device", default="auto", help="auto, cpu or cuda (auto)")
    predict.add_argument("--force", action="store_true", help="overwrite an existing output folder")
    _add_amp_option(predict)
    predict.add_argument("--no-postprocess", action="store_true",
                         help="skip the connected-component post-processing the run decided (segnas postprocess)")
    predict.set_defaults(func=cmd_predict)

    postprocess = commands.add_parser(
        "postprocess", parents=[QUIET, THREADS], help="decide connected-component post-processing on validation",
        description="Decide, on a run's validation cases, whether keeping only the largest connected component "
                    "(of the foreground, then of each label) raises Dice, as nnU-Net does; the decision is saved "
                    "in the run folder and segnas predict applies it.")
    postprocess.add_argument("run_dir", type=Path, help="run folder from segnas train (a fold with validation)")
    postprocess.add_argument("--predictions", type=Path,
                             help="the run's masks of its validation cases (default: predict them now, as segnas "
                                  "predict would: set --tta as you will predict)")
    _add_tta_option(postprocess)
    postprocess.add_argument("--device", default="auto", help="auto, cpu or cuda (auto)")
    postprocess.add_argument("--force", action="store_true", help="decide again over an existing decision")
    postprocess.set_defaults(func=cmd_postprocess)

    export = commands.add_parser("export", parents=[QUIET],
                                 help="write a trained run as a MONAI bundle (TorchScript or ONNX)",
                                 description="Write a trained run's final model in MONAI's bundle layout: "
                                             "models/model.ts (or model.onnx), configs/metadata.json (versions, "
                                             "channels, patch, labels), configs/inference.json (the preprocessing "
                                             "and sliding window as a MONAI bundle config) and configs/plan.json. "
                                             "The exported model is checked against the network on the plan's "
                                             "patch before anything is kept; segnas predict takes the bundle "
                                             "as a run folder.")
    export.add_argument("run_dir", type=Path, help="run folder from segnas train (a finished run)")
    export.add_argument("--format", choices=["torchscript", "onnx"], default="torchscript",
                        help="torchscript (torch.jit.load, MONAI) or onnx (onnxruntime; needs segnas[export]) "
                             "(torchscript)")
    export.add_argument("--out", type=Path, required=True, help="the bundle folder")
    export.add_argument("--force", action="store_true", help="overwrite an existing bundle folder")
    export.set_defaults(func=cmd_export)

    report = commands.add_parser("report", parents=[QUIET, THREADS],
                                 help="one self-contained HTML page about a search (any strategy)",
                                 description="Write one HTML file (pictures embedded, no network access needed) "
                                             "about a search folder: the budgets with their winners (measured "
                                             "cost, scores, search time per phase), each winner's drawing and "
                                             "leaderboard, the super-net's training curves, the strategy's and "
                                             "analyses' pictures, and, given trained run folders with --runs, "
                                             "a Pareto plot of validation Dice against measured memory and "
                                             "parameters. Whatever is missing is listed with the command that "
                                             "makes it.")
    report.add_argument("search_dir", type=Path, help="search folder from segnas search")
    report.add_argument("--out", type=Path, help="the HTML file (default SEARCH_DIR/report.html)")
    report.add_argument("--runs", type=Path, nargs="+", metavar="RUN_DIR",
                        help="finished run folders from segnas train (winners and hand-designed networks; the "
                             "seeds of one network are pooled) for the Pareto plot; their networks are measured "
                             "as the search measured its candidates")
    report.add_argument("--device", help="where to measure the runs' networks (default: where the search measured)")
    report.add_argument("--force", action="store_true", help="overwrite an existing report file")
    report.set_defaults(func=cmd_report)

    evaluate = commands.add_parser("evaluate", parents=[QUIET], help="Dice, NSD and HD95 per case and per label",
                                   description="Compare predicted masks with reference labels of the same name.")
    evaluate.add_argument("pred_dir", type=Path, help="folder of predicted masks")
    evaluate.add_argument("--labels", type=Path, required=True, help="folder of reference labels")
    evaluate.add_argument("--out", type=Path, help="where metrics.csv and summary.json go (default pred_dir)")
    evaluate.add_argument("--dataset-json", type=Path, help="dataset.json for label names")
    evaluate.add_argument("--nsd-tolerance", type=float, nargs="+", default=[1.0],
                          help="NSD tolerance in mm: one value, or one per label (1.0)")
    evaluate.set_defaults(func=cmd_evaluate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from segnas.utils.distributed import init_from_environment, shutdown

    init_from_environment()  # under torchrun: join the process group (gloo on CPU, NCCL on CUDA)
    configure_logging(getattr(args, "quiet", False))
    succeeded = False
    try:
        if hasattr(args, "threads"):
            from segnas.utils.runtime import configure_threads

            configure_threads(args.threads)
        code = args.func(args)
        succeeded = code == 0
        return code
    except SegnasInputError as err:
        print(f"segnas: error: {err}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    except OSError as err:  # a full disk, a read-only or vanished folder: the machine's refusal, not a bug
        where = f"{err.filename}: " if err.filename else ""
        print(f"segnas: error: {where}{err.strerror or err} (files segnas was writing were removed; earlier "
              "results are untouched)", file=sys.stderr)
        return EXIT_OS_ERROR
    except KeyboardInterrupt:
        print("segnas: interrupted", file=sys.stderr)
        return 130
    finally:
        shutdown(succeeded)

"""``make bench``: every checkpoint ratio with its target, in one table, kept.

    python benchmarks/bench.py [--only NAME,...] [--quick] [--out benchmarks/results]

Runs each benchmark in turn, alone (nothing else should run on the machine meanwhile: the load
average before and after is recorded), collects the ratios they record (``results.record``: the
median of interleaved pairs and their spread), prints them as one table with PASS/FAIL against
their targets, and writes ``<out>/<date>.json`` (machine, torch version, sizes, every ratio),
``<out>/<date>.md`` (the table for the docs) and ``<out>/<date>.png`` (each ratio's distance from
its target). ``--quick`` runs smaller sizes and fewer rounds: a check that everything runs, not
figures to quote.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from results import HEADER, RESULTS_ENV, Ratio, read

REPO = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent

# name -> (argv, argv with --quick): a script in benchmarks/ and its arguments; a script under torchrun
# starts with "torchrun". Cheapest first.
BENCHMARKS: dict[str, tuple[list[str], list[str]]] = {
    "runner_overhead": (["runner_overhead.py"], ["runner_overhead.py", "--rounds", "2"]),
    "eval_throughput": (["eval_throughput.py", "--rounds", "20"], ["eval_throughput.py", "--rounds", "2"]),
    "data_throughput": (["data_throughput.py"], ["data_throughput.py", "--rounds", "1", "--per-species", "4"]),
    "resolve": (["resolve.py"], ["resolve.py", "--files", "1000", "--size-mb", "16", "--repeats", "1"]),
    "checkpoint_io_100": (["checkpoint_io.py", "--size-mb", "100", "--repeats", "5"],
                          ["checkpoint_io.py", "--size-mb", "50", "--repeats", "2"]),
    "checkpoint_io_500": (["checkpoint_io.py", "--size-mb", "500", "--repeats", "5"],
                          ["checkpoint_io.py", "--size-mb", "100", "--repeats", "2"]),
    "checkpoint_io_2048": (["checkpoint_io.py", "--size-mb", "2048", "--repeats", "3"],
                           ["checkpoint_io.py", "--size-mb", "200", "--repeats", "2"]),
    "sharded_io": (["torchrun", "sharded_io.py", "--size-mb", "1024", "--repeats", "3"],
                   ["torchrun", "sharded_io.py", "--size-mb", "128", "--repeats", "2", "--reshard-to", "1"]),
    "sharded_io_async": (["torchrun", "sharded_io.py", "--size-mb", "1024", "--async-saves", "12"],
                         ["torchrun", "sharded_io.py", "--size-mb", "128", "--async-saves", "3"]),
    "resume_time": (["resume_time.py", "--rounds", "3"], ["resume_time.py", "--rounds", "1"]),
    "node_local": (["node_local.py", "--size-mb", "256", "--rounds", "5"],
                   ["node_local.py", "--size-mb", "32", "--rounds", "2"]),
    "node_local_sharded": (["node_local_sharded.py", "--size-mb", "256", "--rounds", "3"],
                           ["node_local_sharded.py", "--size-mb", "32", "--rounds", "2"]),
    "checkpoint_overhead": (["checkpoint_overhead.py", "--formats", "bare,file,file-process,bare-sharded,sharded",
                             "--rounds", "2"],
                            ["checkpoint_overhead.py", "--formats", "bare,file-process", "--rounds", "1", "--every", "10",
                             "--steps", "20"]),
}


def _command(argv: list[str]) -> list[str]:
    if argv[0] == "torchrun":
        return [str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc_per_node=2",
                str(HERE / argv[1]), *argv[2:]]
    return [sys.executable, str(HERE / argv[0]), *argv[1:]]


def _machine() -> dict[str, object]:
    import torch

    cpu = ""
    try:
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), "")
    except OSError:
        pass
    mem = 0
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        pass
    return {"cpus": os.cpu_count(), "cpu": cpu, "memory_gib": round(mem / 2**30, 1), "python": platform.python_version(),
            "torch": torch.__version__, "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "platform": platform.platform()}


def chart(ratios: list[Ratio], path: Path, title: str) -> None:
    """One bar per ratio: how far it is on the good side of its target (1 = exactly the target)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targeted = [r for r in ratios if r.target]
    fig, ax = plt.subplots(figsize=(15, 0.38 * len(targeted) + 1.5))
    labels = [f"{r.benchmark}: {r.measure} ({r.target})" for r in targeted]
    values = [min(r.headroom, 5.0) for r in targeted]
    colours = ["#2e7d32" if r.verdict == "PASS" else "#c62828" for r in targeted]
    y = range(len(targeted))
    ax.barh(list(y), values, color=colours)
    for i, r in zip(y, targeted):
        ax.text(values[i], i, f" {r.value:.3g}{'%' if r.unit == '%' else 'x'}", va="center", fontsize=7)
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_yticks(list(y), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("distance from the target (>= 1 meets it; value / target, or target / value for upper bounds)")
    ax.set_title(title, fontsize=9)
    fig.subplots_adjust(left=0.45, right=0.97)  # room for the labels
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(ratios: list[Ratio]) -> str:
    """The table as docs/checkpoints.md shows it."""
    def fmt(r: Ratio, v: float) -> str:
        return f"{v:.1f} %" if r.unit == "%" else f"{v:.3f}x"

    rows = ["| benchmark | measure | median | spread (pairs) | target | |", "|---|---|---|---|---|---|"]
    rows += [f"| {r.benchmark} | {r.measure} | {fmt(r, r.value)} | {fmt(r, r.low)}–{fmt(r, r.high)} ({r.pairs}) | "
             f"{r.target.replace('>=', '≥').replace('<=', '≤')} | {r.verdict} |" for r in ratios]
    return "\n".join(rows) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default="", help=f"comma-separated subset of {', '.join(BENCHMARKS)}")
    p.add_argument("--quick", action="store_true", help="small sizes, one round: checks that it runs")
    p.add_argument("--out", default=str(HERE / "results"))
    args = p.parse_args()
    names = [n for n in args.only.split(",") if n] or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        sys.exit(f"--only: unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    records = Path(tempfile.mkstemp(prefix="bench_", suffix=".jsonl")[1])
    env = {**os.environ, RESULTS_ENV: str(records)}
    started = datetime.datetime.now(datetime.timezone.utc)
    runs = []
    for name in names:
        argv = BENCHMARKS[name][1 if args.quick else 0]
        load = os.getloadavg()[0]
        t0 = time.perf_counter()
        print(f"== {name}: {' '.join(argv)} (load average {load:.2f})", flush=True)
        proc = subprocess.run(_command(argv), cwd=REPO, env=env)
        runs.append({"name": name, "argv": argv, "load_before": load, "load_after": os.getloadavg()[0],
                     "seconds": round(time.perf_counter() - t0, 1), "returncode": proc.returncode})
        if proc.returncode != 0:
            print(f"== {name} failed with exit code {proc.returncode}", flush=True)
    ratios = read(str(records))
    records.unlink()
    print(f"\n{HEADER}")
    for r in ratios:
        print(r.row())
    stamp = started.strftime("%Y-%m-%dT%H%M%SZ")
    machine = _machine()
    (out / f"{stamp}.json").write_text(json.dumps(
        {"started": started.isoformat(), "quick": args.quick, "machine": machine, "runs": runs,
         "ratios": [{**asdict(r), "verdict": r.verdict} for r in ratios]}, indent=1) + "\n")
    (out / f"{stamp}.md").write_text(markdown(ratios))
    chart(ratios, out / f"{stamp}.png",
          f"linnaeus make bench {stamp}{' (quick)' if args.quick else ''}: {machine['cpus']} CPUs, torch {machine['torch']}")
    print(f"\nwritten: {out / f'{stamp}.json'}, {out / f'{stamp}.md'}, {out / f'{stamp}.png'}")
    failed = [r["name"] for r in runs if r["returncode"] != 0]
    if failed:
        sys.exit(f"benchmark(s) failed to run: {', '.join(failed)}")


if __name__ == "__main__":
    main()

"""Run every bench/bench_*.py and gather their tables into bench/results.md.

    python bench/run_all.py [--quick] [--only pipeline register ...]

Each benchmark runs in its own subprocess; a failing one is recorded (exit status, the end of
its output) and the others go on. results.md holds the machine, the date, a summary of the runs
and then each topic's bench/results/<topic>*.md.

--quick passes each benchmark smaller sizes (QUICK_ARGS) to check that everything runs; the
full per-topic files in bench/results/ are put back afterwards, so only results.md holds the
quick figures.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
RESULTS_DIR = BENCH / "results"
SUMMARY = BENCH / "results.md"

# Smaller runs for --quick, used when a benchmark's --help offers no --quick of its own and
# lists every option given here (otherwise it runs with its defaults, said so in results.md).
QUICK_ARGS = {
    "synth": ["--default-patients", "4", "--realistic-patients", "1"],
    "ingest": ["--repeats", "2"],
    "collection": shlex.split("--patients 20 --files 4000 --ingest 1"),
    "register": ["--patients", "3"],
    "segment": ["--default", "1", "--tiny", "2"],
    "train": ["--steps", "2"],
    "pipeline": ["--quick"],
    "learning_curve": shlex.split(
        "--sizes 24 --folds 2 --epochs 1 --workdir bench/_work/learning_curve_quick"
    ),
    "pretrain": shlex.split(
        "--seeds 5 --n 24 --folds 2 --epochs 1 --pretrain-epochs 1 --models early"
        " --curve-sizes --workdir bench/_work/pretrain_quick"
    ),
    "quality": shlex.split(
        "--n 12 --preset tiny --folds 2 --epochs 1 --models ct pet"
        " --workdir bench/_work/quality_quick"
    ),
}


def topics() -> list[str]:
    return sorted(p.stem.removeprefix("bench_") for p in BENCH.glob("bench_*.py"))


def quick_args(topic: str, script: Path) -> list[str]:
    help_text = subprocess.run(
        [sys.executable, str(script), "--help"], capture_output=True, text=True, check=False
    ).stdout
    if "--quick" in help_text:
        return ["--quick"]
    args = QUICK_ARGS.get(topic, [])
    options = [arg for arg in args if arg.startswith("--")]
    return args if all(option in help_text for option in options) else []


def run_one(topic: str, quick: bool) -> dict:
    script = BENCH / f"bench_{topic}.py"
    args = quick_args(topic, script) if quick else []
    print(f"== {topic}: {script.name} {' '.join(args)}", flush=True)
    started, start = time.time(), time.perf_counter()
    with tempfile.TemporaryFile(mode="w+") as log:
        result = subprocess.run(
            [sys.executable, str(script), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=BENCH.parent,
            check=False,
        )
        log.seek(0)
        output = log.read()
    seconds = time.perf_counter() - start
    status = "ok" if result.returncode == 0 else f"FAILED (exit {result.returncode})"
    print(f"   {status} in {seconds:.0f} s", flush=True)
    return {
        "topic": topic,
        "started": started,
        "args": args,
        "status": status,
        "seconds": seconds,
        "tail": output[-3000:],
    }


def machine_info() -> list[str]:
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]  # fmt: skip
        cpu = names[0] if names else cpu
    memory = ""
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        kb = int(meminfo.read_text().split()[1])
        memory = f", {kb / 2**20:.0f} GiB memory"
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    return [
        f"- Machine: {platform.node()}, {cpu}, {os.cpu_count()} CPUs{memory}, no GPU unless a",
        "  topic says so; shared with other work, so times are scale, not truth.",
        f"- Load average when the run ended: {load} (1/5/15 min).",
        f"- {platform.platform()}; Python {platform.python_version()}; {versions()}.",
    ]


def versions() -> str:
    found = []
    for name in ("snakemake", "torch", "monai", "SimpleITK", "numpy"):
        try:
            from importlib.metadata import version

            found.append(f"{name} {version(name)}")
        except Exception:  # noqa: BLE001 - a missing package is just not listed
            continue
    return ", ".join(found)


def topic_files(topic: str) -> list[Path]:
    return sorted(RESULTS_DIR.glob(f"{topic}.md")) + sorted(RESULTS_DIR.glob(f"{topic}_*.md"))


def demote(markdown: str) -> str:
    """Headings one level down, so each topic sits under results.md's own."""
    return "\n".join("#" + line if line.startswith("#") else line for line in markdown.splitlines())


def summary(runs: list[dict], quick: bool, started: str, seconds: float) -> str:
    lines = [
        "# Benchmarks"
        + (" (--quick: small sizes, to check that everything runs)" if quick else ""),
        "",
        f"- Date: {started}; all benchmarks took {seconds / 60:.1f} min.",
        *machine_info(),
        "",
        "| topic | arguments | status | seconds |",
        "|---|---|---|---|",
        *(
            f"| {r['topic']} | {' '.join(r['args']) or '(defaults)'} | {r['status']} "
            f"| {r['seconds']:.0f} |"
            for r in runs
        ),
        "",
    ]
    for run in runs:
        lines += [f"## {run['topic']}", ""]
        if run["status"] != "ok":
            lines += [
                "The benchmark failed; the end of its output:",
                "",
                "```",
                run["tail"],
                "```",
                "",
            ]
        files = [p for p in topic_files(run["topic"]) if p.stat().st_mtime >= run["started"]]
        if not files:
            lines += [f"(this run wrote no bench/results/{run['topic']}.md)", ""]
        lines += topic_tables(files)
    earlier = [t for t in topics() if t not in {r["topic"] for r in runs} and topic_files(t)]
    for topic in earlier:  # not run this time (--only): the tables of its last run
        files = topic_files(topic)
        when = time.strftime(
            "%Y-%m-%d %H:%M", time.localtime(max(p.stat().st_mtime for p in files))
        )
        lines += [f"## {topic} (not run this time: its tables from {when})", ""]
        lines += topic_tables(files)
    return "\n".join(lines)


def topic_tables(files: list[Path]) -> list[str]:
    lines = []
    for path in files:
        lines += [f"From `bench/results/{path.name}`:", "", demote(path.read_text().strip()), ""]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, to check it all runs")
    parser.add_argument("--only", nargs="*", default=None, help="these topics only")
    args = parser.parse_args()
    selected = [t for t in topics() if not args.only or t in args.only]

    started, start = time.strftime("%Y-%m-%d %H:%M %Z"), time.perf_counter()
    backup = Path(tempfile.mkdtemp(prefix="bench_results_"))
    if args.quick and RESULTS_DIR.is_dir():
        shutil.copytree(RESULTS_DIR, backup, dirs_exist_ok=True)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    try:
        runs = [run_one(topic, args.quick) for topic in selected]
        SUMMARY.write_text(summary(runs, args.quick, started, time.perf_counter() - start))
    finally:
        if args.quick:  # keep the full runs' per-topic files
            for path in RESULTS_DIR.glob("*.md"):
                path.unlink()
            shutil.copytree(backup, RESULTS_DIR, dirs_exist_ok=True)
        shutil.rmtree(backup, ignore_errors=True)
    print(f"wrote {SUMMARY}")
    return 0 if all(r["status"] == "ok" for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())

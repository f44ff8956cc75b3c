#!/usr/bin/env python3
"""Runs criterion bench binaries in turn, several times, and quotes medians.

On a noisy machine a comparison of two builds is only fair when their runs
alternate: A, B, A, B, ... This runs each binary `--runs` times in that
order (each run with criterion's `--output-format bencher`), and prints, for
every benchmark, the median time per iteration of each binary with its
spread (min-max), and, within each run, the ratio of every benchmark to the
run's baseline (`--baseline`, a benchmark name such as `per_request/bare`),
so that the ratio is read from one run:

    cargo bench --bench overhead --no-run        # prints the binary's path
    python3 benches/interleave.py --runs 3 --pair layered=bare \
        --filter 'per_request|multi_thread' before=OLD_BINARY after=NEW_BINARY

Names are given as `label=path` to label a binary (`before=...`).

With `--split`, each benchmark named there runs in its own process, in an
order rotated by one every run and reversed every other run, so that no
case always follows the same one (one binary or several):

    python3 benches/interleave.py --runs 10 --baseline per_request/bare \
        --criterion-args '--warm-up-time 1 --measurement-time 5' \
        --split per_request/bare,per_request/layered,per_request/floor after=BINARY
"""

import argparse
import re
import statistics
import subprocess
import sys

LINE = re.compile(r"^test (\S+) +\.\.\. bench: +([\d,]+) ns/iter")


def run(path, filt, extra):
    cmd = [path, "--bench", "--output-format", "bencher", *extra]
    if filt:
        cmd.append(filt)
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    times = {}
    for line in out.splitlines():
        m = LINE.match(line)
        if m:
            times[m.group(1)] = int(m.group(2).replace(",", ""))
    return times


def spread(values, fmt):
    values = sorted(values)
    return f"{fmt(statistics.median(values))} ({fmt(values[0])}-{fmt(values[-1])})"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--filter", default="")
    ap.add_argument("--baseline", help="benchmark each run's ratios are to")
    ap.add_argument(
        "--pair",
        help="OURS=THEIRS: the ratio of every benchmark whose name has OURS to the one "
        "named alike with THEIRS, in the same run (layered=bare)",
    )
    ap.add_argument("--criterion-args", default="", help="passed on, e.g. '--measurement-time 3'")
    ap.add_argument(
        "--split",
        default="",
        help="comma-separated benchmark names, each run in its own process, "
        "in a rotated order (instead of --filter)",
    )
    ap.add_argument("binaries", nargs="+", help="path or label=path")
    args = ap.parse_args()
    binaries = [b.split("=", 1) if "=" in b else (b.rsplit("/", 1)[-1], b) for b in args.binaries]
    extra = args.criterion_args.split()
    results = {label: [] for label, _ in binaries}
    split = [name for name in args.split.split(",") if name]
    for i in range(args.runs):
        for label, path in binaries:
            print(f"run {i + 1}/{args.runs}: {label}", file=sys.stderr, flush=True)
            if not split:
                results[label].append(run(path, args.filter, extra))
                continue
            order = split[i % len(split):] + split[: i % len(split)]
            if i % 2:
                order.reverse()
            times = {}
            for name in order:
                times.update(run(path, f"^{re.escape(name)}$", extra))
            results[label].append(times)
    names = sorted({n for runs in results.values() for r in runs for n in r})
    print(f"| benchmark | {' | '.join(label for label, _ in binaries)} |")
    print(f"|---|{'---|' * len(binaries)}")
    for name in names:
        cells = []
        for label, _ in binaries:
            times = [r[name] for r in results[label] if name in r]
            cells.append(spread(times, lambda ns: f"{ns / 1000:.3f} µs") if times else "-")
        print(f"| {name} | {' | '.join(cells)} |")
    if args.pair:
        ours, theirs = args.pair.split("=", 1)
        print(f"\nratio of `{ours}` to `{theirs}` in the same run, median (min-max):\n")
        print(f"| benchmark | {' | '.join(label for label, _ in binaries)} |")
        print(f"|---|{'---|' * len(binaries)}")
        for name in names:
            if ours not in name:
                continue
            base = name.replace(ours, theirs)
            cells = []
            for label, _ in binaries:
                ratios = [r[name] / r[base] for r in results[label] if name in r and base in r]
                cells.append(spread(ratios, lambda x: f"{x:.2f}x") if ratios else "-")
            print(f"| {name} | {' | '.join(cells)} |")
    if args.baseline:
        print(f"\nratio to `{args.baseline}` in the same run, median (min-max):\n")
        print(f"| benchmark | {' | '.join(label for label, _ in binaries)} |")
        print(f"|---|{'---|' * len(binaries)}")
        for name in names:
            if name == args.baseline:
                continue
            cells = []
            for label, _ in binaries:
                ratios = [r[name] / r[args.baseline] for r in results[label] if name in r and args.baseline in r]
                cells.append(spread(ratios, lambda x: f"{x:.2f}x") if ratios else "-")
            print(f"| {name} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()

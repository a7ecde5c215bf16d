"""The benchmark's tables: medians with min-max, vaultfs as ratios, pinned targets, peak RSS."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

MiB = 1 << 20
DASH = "\u2013"  # en dash: "none" cells and min-max ranges


@dataclass(frozen=True)
class Workload:
    key: str
    label: str
    unit: str


@dataclass
class Results:
    """Samples per (workload, target); every figure is a rate, so higher is better everywhere."""

    workloads: list[Workload]
    targets: list[str]  # in column order
    roles: dict[str, str]  # target -> raw | ref | vaultfs | peer
    backends: dict[str, str]  # target -> local | s3
    samples: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    errors: dict[str, list[str]] = field(default_factory=dict)
    rss: dict[str, tuple[int, str]] = field(default_factory=dict)
    load: list[float] = field(default_factory=list)  # 1-minute load average as each target run began
    ops: dict[tuple[str, str], dict[str, int]] = field(default_factory=dict)  # driver calls in a step
    # CPU seconds in a step (last run): the target's daemon, the S3 server, the benchmark process
    # (the boto3 client, or the program reading and writing through a mount), and the step's wall time.
    cpu: dict[tuple[str, str], tuple[float, float, float, float]] = field(default_factory=dict)

    def add(self, workload: str, target: str, value: float) -> None:
        self.samples.setdefault((workload, target), []).append(value)

    def stats(self, workload: str, target: str) -> tuple[float, float, float] | None:
        values = self.samples.get((workload, target))
        if not values:
            return None
        return statistics.median(values), min(values), max(values)

    def best_peer(self, workload: str, backend: str) -> tuple[str, tuple[float, float, float]] | None:
        best: tuple[str, tuple[float, float, float]] | None = None
        for t in self.targets:
            if self.roles[t] != "peer" or self.backends[t] != backend:
                continue
            s = self.stats(workload, t)
            if s is not None and (best is None or s[0] > best[1][0]):
                best = (t, s)
        return best


def fmt(v: float) -> str:
    if v >= 100:
        return f"{v:,.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def cell(s: tuple[float, float, float] | None, runs: int) -> str:
    if s is None:
        return DASH
    med, lo, hi = s
    return fmt(med) if runs <= 1 or lo == hi else f"{fmt(med)} ({fmt(lo)}{DASH}{fmt(hi)})"


def verdict(ours: tuple[float, float, float], theirs: tuple[float, float, float]) -> str:
    """"ahead" / "behind" only when the min-max ranges do not overlap."""
    if ours[1] > theirs[2]:
        return "ahead"
    if ours[2] < theirs[1]:
        return "behind"
    return "overlap"


def ratio(ours: tuple[float, float, float] | None, theirs: tuple[float, float, float] | None) -> str:
    if ours is None or theirs is None or theirs[0] == 0:
        return DASH
    return f"{ours[0] / theirs[0]:.2f}x"


def results_table(r: Results, runs: int) -> list[str]:
    head = ["workload", "unit", *r.targets]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for w in r.workloads:
        cells = [cell(r.stats(w.key, t), runs) for t in r.targets]
        if all(c == DASH for c in cells):
            continue
        lines.append(f"| {w.label} | {w.unit} | " + " | ".join(cells) + " |")
    return lines


def ratio_table(r: Results) -> list[str]:
    """Each vaultfs target against the best peer on its backend, the raw disk and its pinned reference."""
    cols: list[tuple[str, str, str]] = []  # (header, vaultfs target, compared-with kind)
    for v in (t for t in r.targets if r.roles[t] == "vaultfs"):
        ref = "passthrough" if r.backends[v] == "local" else "boto3"
        cols += [(f"{v} ÷ best peer", v, "peer"), (f"{v} ÷ raw", v, "raw")]
        if ref in r.targets:
            cols.append((f"{v} ÷ {ref}", v, ref))
    if not cols:
        return []
    lines = ["| workload | " + " | ".join(c[0] for c in cols) + " |", "|---|" + "---|" * len(cols)]
    for w in r.workloads:
        cells = []
        for _head, v, kind in cols:
            ours = r.stats(w.key, v)
            if kind == "peer":
                best = r.best_peer(w.key, r.backends[v])
                if ours is None or best is None:
                    cells.append(DASH)
                else:
                    cells.append(f"{ratio(ours, best[1])} {verdict(ours, best[1])} ({best[0]})")
            else:
                cells.append(ratio(ours, r.stats(w.key, "raw" if kind == "raw" else kind)))
        if any(c != DASH for c in cells):
            lines.append(f"| {w.label} | " + " | ".join(cells) + " |")
    return lines if len(lines) > 2 else []


# (vaultfs target, workload, reference target, minimum ratio of medians)
PINNED = [
    ("vaultfs-local", "read_cold", "raw", 0.9),
    ("vaultfs-local", "read_hot", "raw", 0.5),
    ("vaultfs-local", "write_1m", "passthrough", 0.8),
    ("vaultfs-s3", "read_cold", "boto3", 0.8),
    ("vaultfs-s3", "write_1m", "boto3", 0.8),
    ("vaultfs-s3", "create", "boto3", 0.8),
]


def pinned_table(r: Results) -> list[str]:
    labels = {w.key: w.label for w in r.workloads}
    lines = ["| target | measured | needed | met |", "|---|---|---|---|"]
    for v, key, ref, need in PINNED:
        ours, theirs = r.stats(key, v), r.stats(key, ref)
        if ours is None or theirs is None:
            continue
        got = ours[0] / theirs[0] if theirs[0] else 0.0
        met = "yes" if got >= need else "NO"
        lines.append(f"| {v} {labels[key]} ÷ {ref} | {got:.2f}x | ≥ {need}x | {met} |")
    for v in (t for t in r.targets if r.roles[t] == "vaultfs"):
        ahead = behind = overlap = 0
        for w in r.workloads:
            ours, best = r.stats(w.key, v), r.best_peer(w.key, r.backends[v])
            if ours is None or best is None:
                continue
            said = verdict(ours, best[1])
            ahead += said == "ahead"
            behind += said == "behind"
            overlap += said == "overlap"
        total = ahead + behind + overlap
        if total:
            met = "yes" if ahead == total else "NO"
            lines.append(f"| {v} ahead of the best peer (ranges apart) | {ahead} of {total} workloads "
                         f"({behind} behind, {overlap} overlapping) | all | {met} |")
    return lines if len(lines) > 2 else []


def ops_table(r: Results) -> list[str]:
    """Driver calls per workload for the targets that count them (vaultfs), e.g. ``get 1,024, stat 2``."""
    cols = [t for t in r.targets if any(k[1] == t for k in r.ops)]
    if not cols:
        return []
    lines = ["| workload | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for w in r.workloads:
        cells = []
        for t in cols:
            ops = r.ops.get((w.key, t))
            if ops is None:
                cells.append(DASH)
            else:
                shown = sorted(((op, n) for op, n in ops.items() if n), key=lambda x: -x[1])
                cells.append(", ".join(f"{op} {n:,}" for op, n in shown) or "none")
        if any(c != DASH for c in cells):
            lines.append(f"| {w.label} | " + " | ".join(cells) + " |")
    return lines


#: The workloads whose CPU use the report shows: the large transfers, where CPU is what runs out.
CPU_WORKLOADS = ("write_1m", "read_cold", "read_warm")


def cpu_table(r: Results) -> list[str]:
    """CPU seconds of daemon, S3 server and client in the large transfers: ``0.93 + 0.77 + 0.13 in 1.2 s``."""
    cols = [t for t in r.targets if any((w, t) in r.cpu for w in CPU_WORKLOADS)]
    if not cols:
        return []
    lines = ["| workload | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for w in r.workloads:
        if w.key not in CPU_WORKLOADS:
            continue
        cells = []
        for t in cols:
            cpu = r.cpu.get((w.key, t))
            cells.append(DASH if cpu is None else "{:.2f} + {:.2f} + {:.2f} in {:.2f} s".format(*cpu))
        lines.append(f"| {w.label} | " + " | ".join(cells) + " |")
    return lines


def rss_table(r: Results) -> list[str]:
    lines = ["| daemon | peak RSS (MiB) | during |", "|---|---|---|"]
    for t in r.targets:
        if t in r.rss:
            peak, phase = r.rss[t]
            lines.append(f"| {t} | {peak / MiB:.0f} | {phase} |")
    return lines if len(lines) > 2 else []

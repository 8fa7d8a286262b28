"""The cycle report's charts, as PNG files (matplotlib, Agg backend: no display needed).

- :func:`pareto`: accuracy against p95 latency of every model of the cycle (candidates, baselines,
  the champion re-evaluated, the teacher from its logs), the Pareto front joined by a line;
- :func:`confusion`: a model's confusion matrix (gold rows, predicted columns);
- :func:`funnel`: whatever funnel counts the curate stage reported, in its order;
- :func:`history`: the champion's accuracy and p95 latency across cycles.
"""

from __future__ import annotations

from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def pareto_front(points: list[tuple[str, float, float]]) -> list[str]:
    """Names of the points no other point beats on both lower latency and higher accuracy."""
    front = []
    for name, latency, accuracy in points:
        dominated = any(lat <= latency and acc >= accuracy and (lat, acc) != (latency, accuracy)
                        for _, lat, acc in points)
        if not dominated:
            front.append(name)
    return front


def pareto(points: list[dict], out: Path, title: str) -> Path:
    """Scatter of ``{"name", "latency_p95_ms", "accuracy", "kind"}`` with the front highlighted."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    markers = {"fine-tuned": "o", "zero-shot": "x", "in-context": "^", "champion": "*",
               "teacher": "s"}
    usable = [p for p in points if p.get("latency_p95_ms") and p.get("accuracy") is not None]
    front = set(pareto_front([(p["name"], p["latency_p95_ms"], p["accuracy"]) for p in usable]))
    for p in usable:
        kind = p.get("kind", "fine-tuned")
        ax.scatter(p["latency_p95_ms"], p["accuracy"], marker=markers.get(kind, "o"), s=70,
                   color="tab:red" if p["name"] in front else "tab:blue")
        ax.annotate(p["name"], (p["latency_p95_ms"], p["accuracy"]), fontsize=7,
                    xytext=(4, 3), textcoords="offset points")
    on_front = sorted((p for p in usable if p["name"] in front), key=lambda p: p["latency_p95_ms"])
    if len(on_front) > 1:
        ax.plot([p["latency_p95_ms"] for p in on_front], [p["accuracy"] for p in on_front],
                color="tab:red", linewidth=1, alpha=0.6)
    ax.set_xscale("log")
    ax.set_xlabel("p95 latency, ms (log scale; teacher from its logs)")
    ax.set_ylabel("accuracy on the frozen test split")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def confusion(matrix: dict[str, dict[str, int]], out: Path, title: str) -> Path:
    """Heat map of ``gold -> predicted -> count``."""
    plt = _pyplot()
    rows = list(matrix)
    columns = rows + sorted({c for r in matrix.values() for c in r} - set(rows))
    values = [[matrix[r].get(c, 0) for c in columns] for r in rows]
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * len(columns), 1.0 + 0.5 * len(rows)))
    image = ax.imshow(values, cmap="Blues")
    ax.set_xticks(range(len(columns)), columns, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(rows)), rows, fontsize=7)
    for i, row in enumerate(values):
        for j, value in enumerate(row):
            if value:
                ax.text(j, i, str(value), ha="center", va="center", fontsize=6,
                        color="white" if value > max(map(max, values)) / 2 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, shrink=0.7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def funnel(counts: dict[str, int | float], out: Path, title: str) -> Path:
    """Horizontal bars of the funnel's numeric counts, top to bottom in the given order."""
    plt = _pyplot()
    items = [(k, v) for k, v in counts.items() if isinstance(v, int | float)]
    fig, ax = plt.subplots(figsize=(7, 0.9 + 0.35 * len(items)))
    names = [k.replace("_", " ") for k, _ in items][::-1]
    values = [v for _, v in items][::-1]
    ax.barh(names, values, color="tab:green")
    for i, v in enumerate(values):
        ax.text(v, i, f" {v:,}", va="center", fontsize=7)
    ax.set_title(title, fontsize=10)
    ax.set_xscale("symlog")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def history(rows: list[dict], out: Path, title: str) -> Path:
    """Champion accuracy and p95 latency per cycle (``{"cycle", "accuracy", "latency_p95_ms",
    "version"}``), labelled with the champion's version."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.8))
    xs = list(range(1, len(rows) + 1))
    accuracy = [r.get("accuracy") for r in rows]
    ax.plot(xs, [a if a is not None else float("nan") for a in accuracy], marker="o",
            color="tab:blue", label="champion accuracy")
    for x, r in zip(xs, rows, strict=True):
        if r.get("version"):
            ax.annotate(f"v{r['version']}", (x, r.get("accuracy") or 0), fontsize=7,
                        xytext=(3, 4), textcoords="offset points")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("cycle")
    ax.set_ylabel("accuracy (its cycle's test set)")
    ax.set_xticks(xs)
    second = ax.twinx()
    second.plot(xs, [r.get("latency_p95_ms") or float("nan") for r in rows], marker="s",
                color="tab:orange", label="p95 latency (ms)")
    second.set_ylabel("p95 latency, ms")
    ax.set_title(title, fontsize=10)
    fig.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out

"""`relayrl plot RUN_DIR`: reward and held-out accuracy over steps, as a PNG in the run directory."""

from __future__ import annotations

from pathlib import Path

from cluster.metrics import read_metrics


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a cluster node
    import matplotlib.pyplot as plt

    rows = read_metrics(run_dir)  # one row per (kind, step): the last logged, so a resumed run plots once
    train = sorted((r for r in rows if r.get("kind") == "train" and "reward/mean" in r), key=lambda r: r["step"])
    evals = sorted((r for r in rows if r.get("kind") == "eval" and "eval/accuracy" in r), key=lambda r: r["step"])
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if train:
        ax.plot([r["step"] for r in train], [r["reward/mean"] for r in train], color="tab:blue", label="train reward (mean)")
    ax.set_xlabel("step")
    ax.set_ylabel("reward", color="tab:blue")
    if evals:
        ax2 = ax.twinx()
        ax2.plot([r["step"] for r in evals], [100 * r["eval/accuracy"] for r in evals], "o-", color="tab:red",
                 label="held-out accuracy")
        ax2.set_ylabel("held-out accuracy (%)", color="tab:red")
        ax2.set_ylim(0, 100)
    ax.set_title(Path(run_dir).name)
    ax.grid(alpha=0.3)
    fig.legend(loc="upper left", bbox_to_anchor=(0.0, 1.0), bbox_transform=ax.transAxes, fontsize=8)
    fig.tight_layout()
    path = Path(out) if out else Path(run_dir) / "curves.png"
    fig.savefig(path)
    plt.close(fig)
    return path

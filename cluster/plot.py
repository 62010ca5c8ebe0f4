"""`relayrl plot RUN_DIR`: reward and held-out accuracy over steps, as a PNG in the run directory
(curves.png); for an MoE run also expert_load.png: each MoE layer's load entropy on the rollout and
the learner side, and the routing agreement, over steps; for a multi-turn run (rollout.env) also
tool_use.png: the tool-call rate and turns per trajectory (train and held-out), the tool errors and
environment failures, and the environment's share of a trajectory's time; for PPO (a critic) also
critic.png: the value loss and explained variance, and the critic's mean value against the mean return."""

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
    if any("moe/rollout/load_entropy" in r for r in train):
        plot_moe(train, path.with_name("expert_load.png"))
    if any("env/tool_call_rate" in r for r in train):
        plot_tools(train, evals, path.with_name("tool_use.png"))
    if any("critic/loss" in r for r in train):
        plot_critic(train, path.with_name("critic.png"))
    return path


def plot_critic(train: list[dict], path: Path) -> Path:
    import math

    import matplotlib.pyplot as plt

    rows = [r for r in train if "critic/loss" in r]
    steps = [r["step"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), dpi=110)
    ax = axes[0]
    ax.plot(steps, [r["critic/loss"] for r in rows], color="tab:blue", label="value loss")
    ax.set_ylabel("value loss", color="tab:blue")
    ev = [(r["step"], r["critic/explained_variance"]) for r in rows
          if math.isfinite(r.get("critic/explained_variance", math.nan))]
    if ev:
        ax2 = ax.twinx()
        ax2.plot(*zip(*ev), color="tab:red", label="explained variance")
        ax2.set_ylabel("explained variance", color="tab:red")
    ax = axes[1]
    ax.plot(steps, [r["critic/values_mean"] for r in rows], label="mean value (critic)")
    ax.plot(steps, [r["critic/returns_mean"] for r in rows], label="mean return (GAE target)")
    ax.legend(fontsize=8)
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.suptitle(f"{path.parent.name}: critic")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_tools(train: list[dict], evals: list[dict], path: Path) -> Path:
    import matplotlib.pyplot as plt

    rows = [r for r in train if "env/tool_call_rate" in r]
    ev = [r for r in evals if "eval/env/tool_call_rate" in r]
    steps = [r["step"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4), dpi=110)
    ax = axes[0]
    ax.plot(steps, [r["env/tool_call_rate"] for r in rows], label="tool-call rate (train, sampled)")
    if ev:
        ax.plot([r["step"] for r in ev], [r["eval/env/tool_call_rate"] for r in ev], "o-", label="tool-call rate (held-out)")
    ax.plot(steps, [r["env/turns_mean"] / max(1.0, max(x["env/turns_mean"] for x in rows)) for r in rows], ":",
            label="turns per trajectory (/ max)")
    ax.set_ylim(0, 1.05)
    ax.set_title("tool use")
    axes[1].plot(steps, [r["env/tool_errors"] for r in rows], label="tool errors (calls the tool refused)")
    axes[1].plot(steps, [r["env/errors"] for r in rows], label="environment failures (raised / timed out)")
    axes[1].plot(steps, [r["env/cut_fraction"] * r["rollout/samples"] for r in rows], label="trajectories cut by a limit")
    axes[1].set_title("errors and cuts per step")
    axes[2].plot(steps, [100 * r["env/time_share"] for r in rows], label="environment's share of a trajectory's time")
    axes[2].set_ylabel("%")
    axes[2].set_title("time in the environment")
    for a in axes:
        a.set_xlabel("step")
        a.grid(alpha=0.3)
        a.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_moe(train: list[dict], path: Path) -> Path:
    import matplotlib.pyplot as plt

    rows = [r for r in train if "moe/rollout/load_entropy" in r]
    steps = [r["step"] for r in rows]
    layers = sorted({int(k.split("/")[2][5:]) for r in rows for k in r
                     if k.startswith("moe/rollout/layer") and k.endswith("/load_entropy")})
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4), dpi=110)
    for layer in layers:
        for side, style in (("rollout", "-"), ("learner", "--")):
            key = f"moe/{side}/layer{layer}/load_entropy"
            if any(key in r for r in rows):
                ax.plot(steps, [r.get(key, float("nan")) for r in rows], style, label=f"layer {layer} {side}")
    ax.set_title("expert load entropy (1 = balanced)")
    ax.set_xlabel("step")
    ax.set_ylim(0, 1.05)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    for key, label in (("moe/routing_agreement", "learner's own top-k"),
                       ("moe/used_routing_agreement", "experts used by the learner")):
        if any(key in r for r in rows):
            ax2.plot(steps, [r.get(key, float("nan")) for r in rows], label=label)
    ax2.set_title("routing agreement with the sampler")
    ax2.set_xlabel("step")
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path

"""What a run's actors reserve, and whether a cluster can hold it — answered before any actor starts.

Every actor group (cluster/actor_group.py) reserves one placement-group bundle per actor, and a
bundle must fit on one node. `demand(cfg)` lists the groups a run places (the same sizes the
GroupSpecs of cluster/learner_group.py and cluster/rollout_pool.py ask for); `shortfall` compares
them with what a cluster's nodes have (and the Ray labels that let a group onto a node:
PlacementConfig.node_labels). It runs twice: from the config alone when cluster.num_cpus sizes a
local cluster (cluster/validate.py), and with Ray's own view right after ray.init
(cluster/run_setup.py). A topology that cannot be placed is refused with what it needs and what
there is, instead of a placement group that waits and then times out. Import-light: no ray.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional, Sequence

MIN_BUNDLE_CPU = 0.01  # Ray refuses empty bundles: ActorGroup gives an actor that asks for nothing this much


@dataclasses.dataclass(frozen=True)
class GroupDemand:
    name: str  # "learner", "rollout", "reward", "reward_model"
    actors: int
    cpus: float  # per actor
    gpus: float  # per actor
    knobs: tuple[str, str, str]  # the config fields behind (actors, cpus, gpus), for the message
    strategy: str = "pack"  # PlacementConfig.strategy
    labels: tuple[tuple[str, str], ...] = ()  # PlacementConfig.node_labels, as sorted pairs

    @property
    def section(self) -> str:  # the config section that holds this group's placement
        return self.knobs[0].split(".")[0]


@dataclasses.dataclass(frozen=True)
class Node:
    resources: Mapping[str, float]  # "CPU", "GPU", ...
    labels: Mapping[str, str] = dataclasses.field(default_factory=dict)


def demand(cfg: Any) -> list[GroupDemand]:
    """The actor groups of a run (a RunConfig), at their largest: an autoscaled rollout pool counts
    at rollout.autoscale.max_workers."""
    cuda = cfg.cluster.device == "cuda"
    scale = cfg.rollout.autoscale
    workers, workers_knob = ((max(cfg.rollout.num_workers, scale.max_workers), "rollout.autoscale.max_workers")
                             if scale.enabled else (cfg.rollout.num_workers, "rollout.num_workers"))

    def where(placement: Any) -> dict[str, Any]:
        return {"strategy": placement.strategy, "labels": tuple(sorted(placement.node_labels.items()))}

    groups = [
        GroupDemand("learner", cfg.learner.num_ranks, cfg.learner.cpus_per_rank, cfg.learner.gpus_per_rank,
                    ("learner.num_ranks", "learner.cpus_per_rank", "learner.gpus_per_rank"), **where(cfg.learner.placement)),
        GroupDemand("rollout", workers, cfg.rollout.cpus_per_worker,
                    float(cfg.rollout.tensor_parallel_size) if cuda else 0.0,
                    (workers_knob, "rollout.cpus_per_worker", "rollout.tensor_parallel_size"), **where(cfg.rollout.placement)),
        GroupDemand("reward", cfg.reward.num_scorers, cfg.reward.cpus_per_scorer, 0.0,
                    ("reward.num_scorers", "reward.cpus_per_scorer", ""), **where(cfg.reward.placement)),
    ]
    if cfg.cluster.colocate:  # rollout worker i lives in learner rank i's bundle (cluster/colocation.py)
        learner, rollout = groups[0], groups[1]
        groups[:2] = [dataclasses.replace(learner, cpus=learner.cpus + rollout.cpus,
                                          knobs=(learner.knobs[0], "learner.cpus_per_rank + rollout.cpus_per_worker",
                                                 learner.knobs[2]))]
    from learner.algorithms.advantages import NEEDS_CRITIC

    if cfg.algorithm.advantage.name in NEEDS_CRITIC:  # PPO's critic: its own learner group (cluster/ppo.py)
        c = cfg.critic.learner
        groups.append(GroupDemand("critic", c.num_ranks, c.cpus_per_rank, c.gpus_per_rank,
                                  ("critic.learner.num_ranks", "critic.learner.cpus_per_rank",
                                   "critic.learner.gpus_per_rank"), **where(c.placement)))
    if cfg.reward.model_path:
        groups.append(GroupDemand("reward_model", 1, max(cfg.reward.cpus_per_scorer, MIN_BUNDLE_CPU), 0.0,
                                  ("reward.model_path", "reward.cpus_per_scorer", ""), **where(cfg.reward.placement)))
    return [dataclasses.replace(g, cpus=MIN_BUNDLE_CPU) if not (g.cpus or g.gpus) else g for g in groups]


def total(groups: Sequence[GroupDemand], resource: str) -> float:
    return sum(g.actors * _per_actor(g, resource) for g in groups)


def shortfall(groups: Sequence[GroupDemand], nodes: Sequence[Node], where: str) -> list[str]:
    """What does not fit on `nodes` (`where` names the cluster in the message): the sum of each
    resource, then per group the nodes its labels allow — their sum, the largest of them (a bundle
    cannot span nodes), and under strict_spread one node per actor."""
    problems = []
    have = {res: sum(n.resources.get(res, 0.0) for n in nodes) for res in ("CPU", "GPU")}
    for res in ("CPU", "GPU"):
        need = total(groups, res)
        if need > have[res] + 1e-9:
            parts = " + ".join(f"{g.name} {g.actors} x {_per_actor(g, res):g} ({g.knobs[0]} x {_knob(g, res)})"
                               for g in groups if g.actors * _per_actor(g, res))
            fix = ("lower one of those" if res == "CPU" or have[res] else
                   "no GPU is visible to Ray here: use cluster.device=cpu, or run on a machine with GPUs")
            problems.append(f"the actors need {need:g} {res}s, {parts}, but {where} has {have[res]:g}: {fix}")
    if problems:
        return problems
    for g in groups:
        if g.actors:
            problems += _group_shortfall(g, nodes, where)
    return problems


def _group_shortfall(g: GroupDemand, nodes: Sequence[Node], where: str) -> list[str]:
    allowed = [n for n in nodes if all(n.labels.get(k) == v for k, v in g.labels)]
    if not allowed:
        seen = sorted({f"{k}={v}" for n in nodes for k, v in n.labels.items() if not k.startswith("ray.io/")})
        return [f"{g.name}: no node of {where} carries the labels {dict(g.labels)} ({g.section}.placement.node_labels); "
                f"its nodes' labels: {', '.join(seen) or 'none'} (set them with `ray start --labels k=v`)"]
    problems = []
    scope = f"the {len(allowed)} node(s) of {where} labelled {dict(g.labels)}" if g.labels else where
    for res in ("CPU", "GPU"):
        per = _per_actor(g, res)
        if not per:
            continue
        room = [n.resources.get(res, 0.0) for n in allowed]
        if g.actors * per > sum(room) + 1e-9:
            problems.append(f"{g.name}: {g.actors} actors x {per:g} {res}s ({g.knobs[0]} x {_knob(g, res)}) do not fit "
                            f"on {scope}, which have {sum(room):g} {res}s ({g.section}.placement.node_labels)")
        elif per > max(room) + 1e-9:
            problems.append(f"one {g.name} actor asks for {per:g} {res}s ({_knob(g, res)}) but the largest node of "
                            f"{scope} has {max(room):g}: an actor cannot span nodes")
        elif g.strategy == "strict_pack" and g.actors * per > max(room) + 1e-9:
            problems.append(f"{g.name}: {g.section}.placement.strategy=strict_pack puts all {g.actors} actors on one "
                            f"node ({g.actors * per:g} {res}s), but the largest node of {scope} has {max(room):g}: "
                            f"use pack, or fewer actors")
        elif g.strategy == "strict_spread" and sum(r + 1e-9 >= per for r in room) < g.actors:
            problems.append(f"{g.name}: {g.section}.placement.strategy=strict_spread puts each of the {g.actors} actors "
                            f"on its own node, but only {sum(r + 1e-9 >= per for r in room)} node(s) of {scope} can "
                            f"hold one: use spread, or add nodes")
    return problems


def _per_actor(g: GroupDemand, resource: str) -> float:
    return g.cpus if resource == "CPU" else g.gpus


def _knob(g: GroupDemand, resource: str) -> str:
    return g.knobs[1] if resource == "CPU" else g.knobs[2]


def placement_line(where: dict[str, list[dict[str, Any]]]) -> str:
    """One line for the run's start: which actors run on which node."""
    by_node: dict[str, list[str]] = {}
    for name, actors in where.items():
        for i, a in enumerate(actors):
            label = ",".join(f"{k}={v}" for k, v in sorted(a["labels"].items()))
            by_node.setdefault(f"{a['ip']} {a['node_id'][:8]}" + (f" ({label})" if label else ""), []).append(f"{name}[{i}]")
    if len(by_node) == 1:
        return f"placement: every actor on one Ray node, {next(iter(by_node))}"
    return "placement: " + "; ".join(f"{' '.join(names)} on {node}" for node, names in by_node.items())

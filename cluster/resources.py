"""What a run's actors reserve, and whether a cluster can hold it — answered before any actor starts.

Every actor group (cluster/actor_group.py) reserves one placement-group bundle per actor, and a
bundle must fit on one node. `demand(cfg)` lists the groups a run places (the same sizes the
GroupSpecs of cluster/learner_group.py and cluster/rollout_pool.py ask for); `shortfall` compares
them with what a cluster has. It runs twice: from the config alone when cluster.num_cpus sizes a
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


def demand(cfg: Any) -> list[GroupDemand]:
    """The actor groups of a run (a RunConfig), at their largest: an autoscaled rollout pool counts
    at rollout.autoscale.max_workers."""
    cuda = cfg.cluster.device == "cuda"
    scale = cfg.rollout.autoscale
    workers, workers_knob = ((max(cfg.rollout.num_workers, scale.max_workers), "rollout.autoscale.max_workers")
                             if scale.enabled else (cfg.rollout.num_workers, "rollout.num_workers"))
    groups = [
        GroupDemand("learner", cfg.learner.num_ranks, cfg.learner.cpus_per_rank, cfg.learner.gpus_per_rank,
                    ("learner.num_ranks", "learner.cpus_per_rank", "learner.gpus_per_rank")),
        GroupDemand("rollout", workers, cfg.rollout.cpus_per_worker,
                    float(cfg.rollout.tensor_parallel_size) if cuda else 0.0,
                    (workers_knob, "rollout.cpus_per_worker", "rollout.tensor_parallel_size")),
        GroupDemand("reward", cfg.reward.num_scorers, cfg.reward.cpus_per_scorer, 0.0,
                    ("reward.num_scorers", "reward.cpus_per_scorer", "")),
    ]
    if cfg.reward.model_path:
        groups.append(GroupDemand("reward_model", 1, max(cfg.reward.cpus_per_scorer, MIN_BUNDLE_CPU), 0.0,
                                  ("reward.model_path", "reward.cpus_per_scorer", "")))
    return [dataclasses.replace(g, cpus=MIN_BUNDLE_CPU) if not (g.cpus or g.gpus) else g for g in groups]


def total(groups: Sequence[GroupDemand], resource: str) -> float:
    return sum(g.actors * _per_actor(g, resource) for g in groups)


def shortfall(groups: Sequence[GroupDemand], have: Mapping[str, float], where: str,
              largest_node: Optional[Mapping[str, float]] = None) -> list[str]:
    """What does not fit: the sum of each resource ("CPU", "GPU") in `have`, and (given the largest
    node's resources) any one actor's bundle. `where` names the cluster in the message."""
    problems = []
    for res in ("CPU", "GPU"):
        if res not in have:
            continue
        need = total(groups, res)
        if need > have[res] + 1e-9:
            parts = " + ".join(f"{g.name} {g.actors} x {_per_actor(g, res):g} ({g.knobs[0]} x {_knob(g, res)})"
                               for g in groups if g.actors * _per_actor(g, res))
            fix = ("lower one of those" if res == "CPU" or have[res] else
                   "no GPU is visible to Ray here: use cluster.device=cpu, or run on a machine with GPUs")
            problems.append(f"the actors need {need:g} {res}s, {parts}, but {where} has {have[res]:g}: {fix}")
        elif largest_node is not None:  # the sum fits; does each actor fit on one node?
            node = largest_node.get(res, 0.0)
            problems += [f"one {g.name} actor asks for {_per_actor(g, res):g} {res}s ({_knob(g, res)}) but the "
                         f"largest node of {where} has {node:g}: an actor cannot span nodes"
                         for g in groups if g.actors and _per_actor(g, res) > node + 1e-9]
    return problems


def _per_actor(g: GroupDemand, resource: str) -> float:
    return g.cpus if resource == "CPU" else g.gpus


def _knob(g: GroupDemand, resource: str) -> str:
    return g.knobs[1] if resource == "CPU" else g.knobs[2]

"""Everything a run needs before its first step: run directory, model, data, Ray, and the three
actor groups (learner ranks, rollout workers with reward scorers, the weight-sync group)."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

from cluster.config import ConfigError, RunConfig, dump_config
from cluster.dtype import resolve_run_dtypes
from cluster.logs import quiet_driver, to_console, worker_runtime_env
from cluster.data import PromptSet, PromptStream, load_prompt_set, prompt_format_from_config
from cluster.model_check import check_model_dir
from cluster.network import local_ray, loopback_env
from cluster.resources import Node, demand, placement_line, shortfall, total


@dataclasses.dataclass
class Run:
    cfg: RunConfig
    dir: Path
    model_path: str
    tokenizer: Any
    train_prompts: list[dict[str, Any]]
    eval_prompts: list[dict[str, Any]]
    stream: PromptStream
    learner: Any  # cluster.learner_group.LearnerGroup
    rollout: Any  # cluster.rollout_pool.RolloutPool
    sync: Any  # cluster.weight_sync.WeightSync
    probe: tuple[list[list[int]], list[int]]  # fixed sequences for sync verification
    eval_component: str
    eval_threshold: float
    colocation: Any = None  # cluster.colocation.Colocation when cluster.colocate
    startup_seconds: float = 0.0  # from start_run's call until every actor is up and weight sync is joined
    critic: Any = None  # cluster.learner_group.CriticGroup: PPO's value model (cluster/ppo.py start_critic)
    notes: list[str] = dataclasses.field(default_factory=list)  # lines for the run's first lines (dtype choice ...)
    learner_deaths: list[str] = dataclasses.field(default_factory=list)  # ranks lost while the learner started

    def shutdown(self) -> None:
        import ray

        if self.colocation is not None:
            self.colocation.record_events(self.dir, self.rollout.workers)
        for part in (self.rollout, self.learner, self.critic, self.colocation):
            if part is None:
                continue
            try:
                part.shutdown()
            except Exception as e:  # keep shutting the rest down
                logging.getLogger("relayrl").warning("shutdown: %s", e)
        if ray.is_initialized():
            ray.shutdown()

    def record_placement(self) -> str:
        """RUN_DIR/placement.json again, for the actor groups running now (after PPO's critic starts, or
        a learner or critic group is rebuilt); the line for the log."""
        return record_placement(self.dir, actor_groups(self.learner, self.rollout, self.critic))

    def save_models(self, directory: str) -> None:
        """The learner's DeepSpeed checkpoint into `directory` (and PPO's critic beside it)."""
        self.learner.save_checkpoint(directory)
        if self.critic is not None:
            from cluster.checkpoint import CRITIC_DIR

            self.critic.save_checkpoint(str(Path(directory).parent / CRITIC_DIR))


def make_run_dir(cfg: RunConfig) -> Path:
    if cfg.checkpoint.resume:
        return Path(cfg.checkpoint.resume).expanduser().resolve()
    # absolute: the actors (on other nodes, in other working directories) write checkpoints here too
    path = Path(cfg.logging.run_dir or f"runs/{cfg.logging.name}-{time.strftime('%Y%m%d-%H%M%S')}").expanduser().resolve()
    created = not path.exists()
    path.mkdir(parents=True, exist_ok=True)
    if created:
        # Owner-only (0o700, whatever the umask): the run directory holds the config, samples, logs,
        # checkpoints (weights and optimizer state) and the exported model, and every one of them is
        # written inside it, by the driver or by the actors. The directory is the gate, so the files keep
        # the default umask and no process-wide umask is changed. A directory the user made keeps its mode.
        path.chmod(0o700)
    return path


def ensure_model(cfg: RunConfig) -> str:
    path = Path(cfg.model.path).expanduser()
    if cfg.model.tiny is not None:
        from cluster.tiny_model import make_tiny_model

        make_tiny_model(path, cfg.model.tiny)
    return str(path)


def skipped_rows_notes(run_dir: Path, sets: dict[str, PromptSet]) -> list[str]:
    """data.bad_rows=skip: a line for the run's start per file set that lost rows; every skipped row
    (file:line: reason) goes to RUN_DIR/skipped_rows.txt."""
    skipped = [b for s in sets.values() for b in s.skipped]
    if not skipped:
        return []
    path = run_dir / "skipped_rows.txt"
    path.write_text("".join(f"{b}\n" for b in skipped))
    return [f"{note} (all listed in {path})" for label, s in sets.items() if (note := s.skip_note(label))]


def split_cores_for_async(cfg: RunConfig) -> str | None:
    """Async on one CPU machine: rollout workers and learner ranks compute AT THE SAME TIME, and two
    OpenMP thread pools over the same cores thrash (measured: the demo's learn phase 0.25 s -> 1.4 s).
    Unless the user placed them (rollout.cpu_cores / learner.cpu_cores), give each role half the cores.
    Changes cfg in place; returns the line for the run's log, or None."""
    if cfg.trainer.mode != "async" or cfg.cluster.device != "cpu" or cfg.cluster.address or os.environ.get("RAY_ADDRESS"):
        return None
    if cfg.rollout.cpu_cores or cfg.learner.cpu_cores:
        return None
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        return None
    half = len(cores) // 2
    cfg.rollout.cpu_cores, cfg.learner.cpu_cores = cores[:half], cores[half:]
    cfg.rollout.threads_per_worker = cfg.rollout.threads_per_worker or max(1, half // cfg.rollout.num_workers)
    cfg.learner.threads_per_rank = cfg.learner.threads_per_rank or max(1, (len(cores) - half) // cfg.learner.num_ranks)
    return (f"async on one CPU machine: rollout workers on cores {cfg.rollout.cpu_cores}, learner ranks on cores "
            f"{cfg.learner.cpu_cores} (they compute at the same time; rollout.cpu_cores / learner.cpu_cores override)")


def split_cores_for_critic(cfg: RunConfig, async_split: bool = False) -> str | None:
    """PPO on one CPU machine: the policy's ranks and the critic's train AT THE SAME TIME (cluster/ppo.py),
    with the same thrashing as async's two roles (measured on the PPO demo: the learn phase 1.9 s with
    both on every core). Unless the user placed them (learner.cpu_cores / critic.learner.cpu_cores), the
    critic takes half the policy learner's cores: of all cores, or of the learner's half after
    split_cores_for_async (`async_split`); with one core left they share it, a thread each.
    Changes cfg in place; returns the line for the run's log, or None."""
    from learner.algorithms.advantages import NEEDS_CRITIC

    critic = cfg.critic.learner
    if (cfg.algorithm.advantage.name not in NEEDS_CRITIC or cfg.cluster.device != "cpu" or cfg.cluster.address
            or os.environ.get("RAY_ADDRESS") or critic.cpu_cores or (cfg.learner.cpu_cores and not async_split)):
        return None
    cores = list(cfg.learner.cpu_cores) or sorted(os.sched_getaffinity(0))
    half = len(cores) // 2
    if half == 0:  # one core for both
        cfg.learner.threads_per_rank, critic.cpu_cores, critic.threads_per_rank = 1, cores, 1
    else:
        cfg.learner.cpu_cores, critic.cpu_cores = cores[:half], cores[half:]
        if async_split or not cfg.learner.threads_per_rank:  # the user's own value stays (sync)
            cfg.learner.threads_per_rank = max(1, half // cfg.learner.num_ranks)
        critic.threads_per_rank = critic.threads_per_rank or max(1, (len(cores) - half) // critic.num_ranks)
    return (f"PPO on one CPU machine: learner ranks on cores {cfg.learner.cpu_cores}, critic ranks on cores "
            f"{critic.cpu_cores} (they train at the same time; learner.cpu_cores / critic.learner.cpu_cores override)")


def start_ray(cfg: RunConfig, run_dir: Path) -> None:
    """Join the Ray cluster at cluster.address (or RAY_ADDRESS), or start a local one that listens on
    loopback only (cluster/network.py); then refuse a topology the cluster cannot hold, before any
    actor is placed, naming what the actors need and what the cluster has."""
    import ray

    runtime_env = worker_runtime_env(run_dir)  # actor output: RUN_DIR/logs/actors.log (cluster/logs.py)
    quiet = dict(logging_level=logging.ERROR, log_to_driver=to_console())
    groups = demand(cfg)
    address = cfg.cluster.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, runtime_env=runtime_env or None, **quiet)
    else:
        # Logical CPUs for placement: threads are set explicitly per actor, so sizing the cluster to the
        # actors (above the core count if need be) does not oversubscribe; cluster.num_cpus, if set, is the size.
        num_cpus = cfg.cluster.num_cpus or max(math.ceil(total(groups, "CPU") - 1e-9), os.cpu_count() or 1)
        runtime_env = {**runtime_env, "env_vars": {**runtime_env.get("env_vars", {}), **loopback_env()}}
        with local_ray() as loopback:
            ray.init(num_cpus=num_cpus, runtime_env=runtime_env, **loopback, **quiet)
    nodes = [Node(n["Resources"], n.get("Labels") or {}) for n in ray.nodes() if n["Alive"]]
    problems = shortfall(groups, nodes, "the Ray cluster")
    if problems:
        ray.shutdown()
        raise ConfigError("the cluster cannot hold this run's actors:\n  " + "\n  ".join(problems))


def actor_groups(learner: Any, rollout: Any, critic: Any = None) -> dict[str, Any]:
    """Every actor group of a run by name, as placement.json lists them."""
    return {"learner": learner.group, **({"critic": critic.group} if critic is not None else {}),
            "rollout": rollout.workers, "reward": rollout.scorers,
            **({"reward_model": rollout.reward_model} if rollout.reward_model else {})}


def record_placement(run_dir: Path, groups: dict[str, Any]) -> str:
    """Where each actor landed (node id, IP, Ray labels) -> RUN_DIR/placement.json; the line for the log."""
    from cluster.actor_group import placement

    where = placement(groups)
    (run_dir / "placement.json").write_text(json.dumps(where, indent=1))
    return placement_line(where)


def check_value_model(cfg: RunConfig, model_path: str) -> None:
    """PPO: the critic is the model's architecture with a scalar head (transformers' *ForTokenClassification);
    refuse, before any actor starts, an architecture transformers has no such class for."""
    from learner.algorithms.advantages import NEEDS_CRITIC

    if cfg.algorithm.advantage.name not in NEEDS_CRITIC:
        return
    from transformers.models.auto.modeling_auto import MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES

    path = Path(cfg.critic.model_path or model_path).expanduser()
    model_type = json.loads((path / "config.json").read_text()).get("model_type", "")
    if model_type not in MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES:
        raise ConfigError(f"algorithm.advantage.name=gae: the critic is {path}'s architecture with a value head, and "
                          f"transformers has no token-classification model for model_type {model_type!r}: set "
                          f"critic.model_path to a model of a supported type, or use a group estimator (grpo, rloo, ...)")


def optimizer_steps(cfg: RunConfig) -> int:
    """The RL optimizer steps of a run, which the LR schedules (policy and critic) span."""
    return cfg.trainer.total_steps * cfg.algorithm.epochs * cfg.algorithm.mini_batches


def start_learner(cfg: RunConfig, model_path: str, colocation: Any = None) -> Any:
    """The learner group (placed, then built): at start-up, and again when a rank died."""
    from cluster.learner_group import LearnerGroup

    return LearnerGroup(model_path, cfg.learner, cfg.algorithm, total_steps=optimizer_steps(cfg),
                        temperature=cfg.rollout.sampling.temperature, device=cfg.cluster.device, colocation=colocation)


def start_learner_group(cfg: RunConfig, model_path: str, colocation: Any, rollout: Any, notes: list[str],
                        deaths: list[str]) -> tuple[Any, Any]:
    """The learner group and its weight-sync group with the rollout workers, at start-up. A learner rank
    lost meanwhile (placement, rendezvous, model load, the weight-sync group forming) builds a new group
    at once, the death counted in learner.max_restarts (`deaths`); the rollout workers' joins to the
    dead rank 0 fail at once: before they probed its port by the refusal (check_rendezvous_host), once
    connected to its store by the reset connection (measured: at once). Only a rank 0 lost in the
    milliseconds between a worker's probe and its connect leaves that worker retrying a refused port
    for ~2x weight_sync.timeout_s, which the next set-up, bounded by timeout_s, does not survive. A
    rollout worker lost before it joined (its engine starting, or the group forming) is replaced,
    counted in rollout.max_restarts; the learner group, whose rank 0 would wait for the dead worker to
    join, is built again too. An actor whose constructor raised is not retried: the error is raised."""
    from cluster.actor_group import ActorLost
    from cluster.learner_recovery import LearnerRecovery, count_death
    from cluster.weight_sync import WeightSync

    while True:
        learner = None
        try:
            learner = start_learner(cfg, model_path, colocation)
            sync = WeightSync(learner, rollout, cfg.weight_sync, cfg.cluster.device)
            sync.setup()
            return learner, sync
        except BaseException as lost:
            if learner is not None:
                learner.shutdown(lost=True)  # its ranks may wait on a dead rank or rollout worker
            if not isinstance(lost, ActorLost) or lost.in_constructor:
                raise  # not a death, or one a new actor would repeat
            if LearnerRecovery.covers(lost):
                count_death(deaths, lost, cfg.learner.max_restarts)
                notes.append(f"{lost}: while the learner group started; a new group starts "
                             f"({len(deaths)} of at most {cfg.learner.max_restarts} rebuilds)")
                continue
            dead = rollout.dead_after(lost)
            if not dead:
                raise
            rollout.replace_dead(dead, f"died as the run started ({lost})")
            notes.append(f"{lost}: a new rollout worker in its place; the learner group and the weight-sync "
                         f"group start again")


def start_run(cfg: RunConfig) -> Run:
    from transformers import AutoTokenizer

    from cluster.colocation import Colocation
    from cluster.rollout_pool import RolloutPool

    t0 = time.perf_counter()
    cfg, notes = resolve_run_dtypes(cfg)  # model.dtype=auto -> what this machine computes fastest
    async_split = split_cores_for_async(cfg)  # async: rollout and learner compute at the same time
    critic_split = split_cores_for_critic(cfg, bool(async_split))  # PPO: so do policy and critic
    notes += [n for n in (async_split, critic_split) if n]
    run_dir = make_run_dir(cfg)
    log_dir = quiet_driver(run_dir)
    notes.append(f"library and actor logs: {log_dir}/")
    dump_config(cfg, run_dir / ("config.resumed.yaml" if cfg.checkpoint.resume else "config.yaml"))
    model_path = ensure_model(cfg)
    check_model_dir(model_path, cfg)  # missing or mismatched files: one error saying what to change, no actor started
    if cfg.reward.model_path:
        check_model_dir(cfg.reward.model_path, need_safetensors=False, field="reward.model_path")
    if cfg.critic.model_path:
        check_model_dir(cfg.critic.model_path, field="critic.model_path")
    check_value_model(cfg, model_path)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    ws = cfg.trainer.warm_start
    fmt = prompt_format_from_config(cfg.data, required=(ws.target_key,) if ws.steps > 0 else (),
                                    engine_room=cfg.rollout.max_model_len - cfg.rollout.sampling.max_new_tokens)
    train = load_prompt_set(cfg.data.train_files, fmt, tokenizer)  # bad rows: one error, or skipped and counted
    evals = load_prompt_set(cfg.data.eval_files, fmt, tokenizer) if cfg.data.eval_files else PromptSet([], [], 0)
    notes += skipped_rows_notes(run_dir, {"data.train_files": train, "data.eval_files": evals})
    train_prompts, eval_prompts = train.prompts, evals.prompts
    stream = PromptStream(train_prompts, cfg.data.seed, cfg.data.shuffle)

    start_ray(cfg, run_dir)
    # The rollout workers' constructors (vLLM import, engine start, warm-up) run in their actors while
    # the learner group builds its DeepSpeed engines: start-up pays the longer of the two, not the sum.
    colocation = Colocation(cfg) if cfg.cluster.colocate else None  # one bundle per (rank, engine) pair
    rollout = RolloutPool(model_path, cfg.rollout.dtype, cfg.rollout, cfg.reward, cfg.cluster.device, colocation)
    deaths: list[str] = []
    try:
        learner, sync = start_learner_group(cfg, model_path, colocation, rollout, notes, deaths)
    except BaseException:
        rollout.shutdown()
        raise
    notes.append(record_placement(run_dir, actor_groups(learner, rollout)))

    probe_prompt = tokenizer(train_prompts[0]["prompt"], add_special_tokens=False)["input_ids"]
    probe_tail = tokenizer(" 0123456789 relayrl probe", add_special_tokens=False)["input_ids"]
    sync.probe = ([probe_prompt + probe_tail], [len(probe_prompt)])
    component = cfg.trainer.eval_component or (cfg.reward.functions[0].name if cfg.reward.functions
                                               else "env" if cfg.rollout.env.name else "model")
    return Run(cfg, run_dir, model_path, tokenizer, train_prompts, eval_prompts, stream, learner, rollout, sync,
               ([probe_prompt + probe_tail], [len(probe_prompt)]), component, cfg.trainer.eval_threshold,
               colocation, time.perf_counter() - t0, None, notes, deaths)

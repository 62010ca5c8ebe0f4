"""The whole run's typed configuration: the schema composed from each package's own dataclasses,
loading (YAML + dotlist overrides), key checking with "did you mean", and YAML dump.

Defaults live only in the dataclasses; configs/*.yaml hold overrides. Cross-field checks live in
cluster/validate.py and run once, before any actor starts. Import-light (no torch, ray, vllm).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import field
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, ListConfig, OmegaConf

from actors.config import BufferConfig, RewardConfig, RolloutConfig
from cluster.tiny_model import TinyModelSpec
from learner.algorithms.registry import suggest
from learner.config import AlgorithmConfig, CriticConfig, LearnerConfig, one_of


@dataclasses.dataclass
class ModelConfig:
    path: str = ""  # a Hugging Face model directory (config, safetensors, tokenizer)
    # auto: bfloat16 where the CPU/GPU computes it natively, else float32 (cluster/dtype.py says why);
    # the default of rollout.dtype and learner.dtype
    dtype: str = one_of("auto", "float32", "bfloat16", default="auto")
    tiny: Optional[TinyModelSpec] = None  # set: build the project's tiny model at `path` if it is missing


@dataclasses.dataclass
class DataConfig:
    train_files: list[str] = field(default_factory=list)  # jsonl or parquet
    eval_files: list[str] = field(default_factory=list)
    # trainer.mode=offline with algorithm.dpo: jsonl rows {prompt, chosen, rejected} (the prompt through
    # prompt_template; train_files still give the warm start and the weight-sync probe's prompt)
    preference_files: list[str] = field(default_factory=list)
    prompt_key: str = "prompt"  # the field that holds the prompt text; every other field goes to sample.meta
    prompt_template: str = "{prompt}"  # str.format over the row's fields, e.g. "{question}\nAnswer:"
    chat_template: bool = False  # wrap the prompt with the tokenizer's chat template
    system_prompt: Optional[str] = None
    max_prompt_tokens: int = 256  # longer prompts are bad rows (0: what rollout.max_model_len leaves after max_new_tokens)
    # rows that cannot become prompts (bad JSON, missing/null/non-text/empty prompt, over max_prompt_tokens):
    # error: one error at start-up listing them as file:line; skip: drop them, counted and reported at the run's start
    bad_rows: str = one_of("error", "skip", default="error")
    shuffle: bool = True
    seed: int = 0


@dataclasses.dataclass
class WarmStartConfig:
    """Supervised warm start (cross-entropy on prompt -> reference answer) through the same learner."""

    steps: int = 0  # supervised steps (0: no warm start); with target_accuracy, the most it may take
    batch_size: int = 64
    lr: float = 1e-3
    target_key: str = "answer"  # the data field the model is taught to output (plus EOS)
    # > 0: stop as soon as the policy's accuracy (as held-out evaluation measures it: pass@eval_n at
    # eval_temperature) on `check_prompts` training prompts reaches this, checked every `check_every`
    # steps. RL then starts from the same accuracy whatever the seed or the CPU's float path.
    target_accuracy: float = 0.0
    check_every: int = 50
    check_prompts: int = 256
    # MoE router load-balancing loss in the warm start only; None: learner.moe_aux_loss_coef, as in RL.
    # The warm start stands in for pretraining, which balances experts (Qwen3-MoE: 1e-3, Mixtral: 2e-2);
    # RL then runs without it as the peers do (README "MoE")
    moe_aux_loss_coef: Optional[float] = None


@dataclasses.dataclass
class TrainerConfig:
    # async needs algorithm.off_policy != none; offline = algorithm.dpo on data.preference_files (no rollouts
    # trained on: the engines only evaluate)
    mode: str = one_of("sync", "async", "offline", default="sync")
    total_steps: int = 10
    prompts_per_step: int = 8  # B groups per step (each rollout.n samples)
    seed: int = 0
    eval_every: int = 10  # 0 disables periodic evaluation (before/after RL still run when eval files exist)
    eval_n: int = 1  # samples per eval prompt (pass@k with k = eval_n)
    eval_temperature: float = 0.0  # 0 = greedy
    eval_max_prompts: int = 0  # 0 = all
    # reward component that decides correctness; "" = the first reward function (none: "env" with an
    # environment, else the reward model's "model")
    eval_component: str = ""
    eval_threshold: float = 1.0  # a sample is correct when that component is >= this
    warm_start: WarmStartConfig = field(default_factory=WarmStartConfig)


@dataclasses.dataclass
class WeightSyncConfig:
    backend: str = one_of("auto", "gloo", "nccl", default="auto")  # auto: gloo on CPU, nccl on GPU
    bucket_mb: float = 64.0
    timeout_s: float = 120.0  # a broadcast not done by then fails, naming who did not answer
    verify_every: int = 0  # probe-logprob check of every rollout worker every N steps (0 = never)
    # max |learner - rollout| probe logprob; None: 1e-3 when both sides run float32 (~1e-6 apart on a fresh
    # model, more as training sharpens it: 1.25e-4 at step 400 of the dense demo's seed 1, 12-07, which
    # the earlier 1e-4 stopped), 2e-2 when either runs bfloat16 (two bf16 engines differ by ~1e-2); wrong
    # weights differ by >> 0.1
    verify_tolerance: Optional[float] = None


@dataclasses.dataclass
class ClusterConfig:
    """Where a run listens (cluster/network.py): a local cluster, on 127.0.0.1 only; a cluster joined
    at `address`, on each node's IP as given to `ray start --node-ip-address` (and GLOO_SOCKET_IFNAME /
    NCCL_SOCKET_IFNAME if set): no bind option here, the cluster's own configuration is the one source."""

    address: Optional[str] = None  # Ray address to join; None: RAY_ADDRESS, else a local cluster
    # local cluster only: its logical CPUs (the actors' reservations must fit); None: the actors' sum or
    # the machine's core count, whichever is larger (threads are set per actor, so no oversubscription)
    num_cpus: Optional[int] = None
    device: str = one_of("cpu", "cuda", default="cpu")
    # true: rollout worker i shares learner rank i's placement bundle (its node, and on GPU its device):
    # the engines sleep while the learner computes and wake for the weight load and generation, and
    # weights move through shared memory on that node instead of the network (cluster/colocation.py)
    colocate: bool = False


@dataclasses.dataclass
class LoggingConfig:
    run_dir: str = ""  # "" = runs/<name>-<time>
    name: str = "relayrl"
    tensorboard: bool = True
    wandb_project: Optional[str] = None
    dump_samples_every: int = 10
    progress: bool = True


@dataclasses.dataclass
class CheckpointConfig:
    every: int = 0  # steps; 0 = only at the end
    keep_last: int = 2
    resume: Optional[str] = None  # a run directory to continue from its latest checkpoint
    export_hf: bool = True  # write the final Hugging Face model directory


@dataclasses.dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    buffer: BufferConfig = field(default_factory=BufferConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    critic: CriticConfig = field(default_factory=CriticConfig)  # PPO (algorithm.advantage.name=gae) only
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    weight_sync: WeightSyncConfig = field(default_factory=WeightSyncConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)


class ConfigError(ValueError):
    """A configuration problem; the message says what to change."""


def check_keys(schema: type, given: Any, path: str = "") -> None:
    """Raise on a key the schema does not have, with a "did you mean" hint and the dotted path.

    `schema` is a dataclass type; free-form `dict` fields (params, engine kwargs) are not walked:
    their contents are checked by whoever owns them (e.g. the algorithm registries).
    """
    if not isinstance(given, (dict, DictConfig)):
        return
    hints = typing.get_type_hints(schema)
    names = [f.name for f in dataclasses.fields(schema)]
    for key, value in given.items():
        where = f"{path}.{key}" if path else str(key)
        if key not in hints:
            raise ConfigError(f"unknown config key '{where}'{suggest(str(key), names)}; "
                              f"valid keys under '{path or '<root>'}': {', '.join(sorted(names))}")
        field_type = hints[key]
        candidates = [field_type, *typing.get_args(field_type)]  # Optional[X] -> X
        if isinstance(value, (list, ListConfig)) and typing.get_origin(field_type) is list:
            elem = typing.get_args(field_type)[0]
            if dataclasses.is_dataclass(elem):
                for i, item in enumerate(value):
                    check_keys(elem, item, f"{where}[{i}]")
            continue
        for t in candidates:
            if dataclasses.is_dataclass(t):
                check_keys(t, value, where)
                break


def load_config(path: Optional[str | Path] = None, overrides: list[str] | None = None) -> RunConfig:
    """Schema defaults <- YAML file <- dotlist overrides (`key.sub=value`), checked and typed.

    Returns a `RunConfig` object (typed attribute access); cross-field validation is separate
    (cluster.validate.validate) so that tools can load a config without judging it.
    """
    layers = []
    if path is not None:
        p = Path(path)
        if not p.exists():
            raise ConfigError(f"config file not found: {p}")
        layers.append(OmegaConf.load(p))
    if overrides:
        for item in overrides:
            if "=" not in item:
                raise ConfigError(f"override '{item}' is not of the form key=value (e.g. trainer.total_steps=20)")
        layers.append(OmegaConf.from_dotlist(list(overrides)))
    schema = OmegaConf.structured(RunConfig)
    for layer in layers:
        check_keys(RunConfig, OmegaConf.to_container(layer, resolve=False))
    try:
        merged = OmegaConf.merge(schema, *layers)
    except Exception as e:  # omegaconf's type errors: keep its message, say it is the config's fault
        raise ConfigError(f"invalid config value: {e}") from None
    try:
        return OmegaConf.to_object(merged)
    except Exception as e:  # omegaconf's type errors: keep its message, say it is the config's fault
        raise ConfigError(f"invalid config value: {e}") from None


def to_yaml(cfg: RunConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def dump_config(cfg: RunConfig, path: str | Path) -> None:
    Path(path).write_text(to_yaml(cfg))

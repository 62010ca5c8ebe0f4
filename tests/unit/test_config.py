"""Config schema, loading, key checking and the named cross-field checks."""

import dataclasses
import functools

import pytest
from omegaconf import OmegaConf

from cluster.config import ConfigError, RunConfig, dump_config, load_config, to_yaml
from cluster.resources import demand
from cluster.validate import CHECKS, choice_fields, validate
from learner.config import field_choices, one_of

pytestmark = pytest.mark.unit

CONFIGS = ["configs/demo_grpo.yaml", "configs/demo_dapo.yaml", "configs/demo_gspo.yaml"]


def good(**over) -> RunConfig:
    base = ["model.path=/tmp", "model.tiny={}", "data.train_files=[configs/data/arithmetic/train.jsonl]",
            "reward.functions=[{name: arithmetic}]"]
    return load_config(None, base + [f"{k}={v}" for k, v in over.items()])


@pytest.mark.parametrize("path", CONFIGS)
def test_shipped_configs_validate(path):
    cfg = validate(load_config(path))
    assert isinstance(cfg, RunConfig)


def test_defaults_only_in_schema_and_overrides_apply():
    cfg = good(**{"trainer.total_steps": 7, "algorithm.surrogate.params.clip_high": 0.28})
    assert cfg.trainer.total_steps == 7
    assert cfg.algorithm.surrogate.params == {"clip_high": 0.28}
    assert cfg.rollout.n == RunConfig().rollout.n


def test_unknown_key_suggests_the_close_one():
    with pytest.raises(ConfigError, match=r"unknown config key 'trainer.totl_steps'.*did you mean 'total_steps'"):
        load_config(None, ["trainer.totl_steps=3"])


def test_unknown_nested_key_in_list_element():
    with pytest.raises(ConfigError, match=r"reward.functions\[0\].wieght.*did you mean 'weight'"):
        load_config(None, ["reward.functions=[{name: arithmetic, wieght: 1}]"])


def test_wrong_type_is_a_config_error():
    with pytest.raises(ConfigError, match="total_steps"):
        load_config(None, ["trainer.total_steps=many"])


def test_override_without_equals_sign():
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["trainer.total_steps"])


@pytest.mark.parametrize("over, check, hint", [
    ({"rollout.n": 1}, "group_size_for_group_estimator", "rollout.n >= 2"),
    ({"trainer.mode": "async"}, "async_needs_off_policy_correction", "off_policy.name"),
    ({"learner.num_ranks": 3, "learner.zero_stage": 3}, "batch_divides_ranks", "ZeRO-3"),
    ({"algorithm.surrogate.name": "ppo_clp"}, "choices_exist", "did you mean 'ppo_clip'"),
    ({"algorithm.surrogate.params": "{clip_hihg: 0.3}"}, "choices_exist", "did you mean 'clip_high'"),
    ({"reward.functions": "[{name: exact_mach}]"}, "reward_functions_exist", "did you mean 'exact_match'"),
    ({"weight_sync.backend": "nccl"}, "device_consistency", "gloo"),
    ({"rollout.max_model_len": 16}, "sequence_fits_engine", "max_model_len"),
    ({"rollout.max_num_batched_tokens": 512}, "engine_scheduler", "at least rollout.max_num_seqs=1024"),
    ({"rollout.env.name": "calculator", "rollout.max_model_len": 32768}, "engine_scheduler",
     "rollout.max_model_len=32768 (vLLM refuses less): raise it to 32768"),
    ({"rollout.engine_kwargs": "{max_num_seqs: 64}"}, "engine_scheduler", "set rollout.max_num_seqs instead"),
    ({"rollout.max_num_seqs": 0}, "positive_sizes", "rollout.max_num_seqs=0"),
    ({"buffer.gfpo.enabled": True, "buffer.gfpo.keep": 8}, "gfpo_keeps_fewer", "keep"),
    ({"buffer.refill": "expected"}, "refill_needs_dynamic_sampling", "buffer.dynamic_sampling=true"),
    ({"buffer.refill": "expectd"}, "enum_values", "buffer.refill='expectd' (valid: missing, expected)"),
    ({"trainer.eval_n": 4}, "eval_sampling", "eval_temperature"),
    ({"trainer.warm_start.target_accuracy": 1.5}, "warm_start_target", "must be in [0, 1]"),
    ({"trainer.warm_start.target_accuracy": 0.3, "trainer.warm_start.steps": 100, "trainer.warm_start.check_every": 0},
     "warm_start_target", "check_every=0"),
    ({"trainer.warm_start.moe_aux_loss_coef": -0.01}, "warm_start_target", "moe_aux_loss_coef=-0.01 must be >= 0"),
    ({"model.dtype": "fp8"}, "enum_values", "model.dtype='fp8' (valid: auto, float32, bfloat16)"),
    ({"learner.zero_stage": 4}, "enum_values", "learner.zero_stage=4 (valid: 0, 1, 2, 3)"),
    ({"rollout.dtype": "fp16"}, "enum_values", "rollout.dtype='fp16' (valid: '', float32, bfloat16)"),
    ({"learner.optimizer.name": "fused_adam"}, "device_consistency", "CUDA"),
    ({"cluster.num_cpus": 1}, "resources_fit", "need 2.01 CPUs"),
    ({"learner.cpus_per_rank": -1}, "resources_fit", "learner.cpus_per_rank=-1"),
    ({"cluster.num_cpus": 8, "cluster.address": "10.0.0.1:6379"}, "resources_fit", "remove cluster.num_cpus"),
    ({"learner.offload_params": True}, "offload_needs_zero", "zero_stage=3"),
    ({"learner.routing_replay": True}, "routing_replay_recorded", "rollout.record_routed_experts=true"),
    ({"learner.offload_optimizer": True, "learner.zero_stage": 0}, "offload_needs_zero", "zero_stage >= 1"),
    ({"rollout.sampling.temperature": 0}, "rollout_sampling", "temperature > 0 or rollout.n=1"),
    ({"algorithm.kl_in_reward": True}, "critic_setup", "algorithm.advantage.name=gae and algorithm.kl_coef > 0"),
    ({"critic.model_path": "/m"}, "critic_setup", "trains no critic"),
    ({"algorithm.advantage.name": "gae", "algorithm.dpo.enabled": True}, "critic_setup", "algorithm.dpo.enabled"),
    ({"algorithm.advantage.name": "gae", "critic.learner.num_ranks": 3}, "critic_setup",
     "critic.learner.num_ranks=3"),
    ({"algorithm.advantage.name": "gae", "critic.value_clip": 0}, "critic_setup", "critic.value_clip"),
    ({"algorithm.advantage.name": "gae", "critic.learner.routing_replay": True}, "critic_setup",
     "critic.learner.routing_replay=True: not used by the critic"),
    ({"algorithm.advantage.name": "gae", "critic.learner.optimizer.name": "fused_adam"}, "critic_setup", "CUDA"),
    ({"algorithm.advantage.name": "gae", "algorithm.kl_coef": 0.1, "algorithm.kl_in_reward": True,
      "trainer.mode": "async", "algorithm.off_policy.name": "tis"}, "critic_setup", "trainer.mode=sync"),
    ({"algorithm.advantage.name": "gae", "critic.learner.offload_optimizer": True, "critic.learner.zero_stage": 0},
     "offload_needs_zero", "critic.learner.zero_stage >= 1"),
    ({"algorithm.advantage.name": "gae", "critic.learner.zero_stage": 5}, "enum_values",
     "critic.learner.zero_stage=5"),
    ({"rollout.env.name": "calculater"}, "environment_usable", "did you mean 'calculator'"),
    ({"rollout.env.name": "calculator", "rollout.env.params": "{answer: x}"}, "environment_usable",
     "no parameter 'answer'"),
    ({"rollout.env.name": "calculator", "rollout.env.max_turns": 0}, "environment_usable", "max_turns=0 must be > 0"),
    ({"rollout.env.name": "no_such_pkg.mod:Env"}, "environment_usable", "cannot import 'no_such_pkg.mod'"),
    ({"reward.functions": "[]"}, "reward_functions_exist", "rollout.env.name"),
    ({"algorithm.turn_credit": True}, "environment_usable", "set rollout.env.name"),
    ({"trainer.mode": "offline"}, "preference_setup", "algorithm.dpo.enabled=true and data.preference_files"),
    ({"algorithm.dpo.enabled": True, "algorithm.dpo.params": "{beta: -1}"}, "preference_setup", "beta must be > 0"),
    ({"algorithm.dpo.enabled": True, "algorithm.dpo.params": "{bta: 1}"}, "preference_setup", "did you mean 'beta'"),
    ({"algorithm.dpo.enabled": True, "trainer.mode": "async", "algorithm.off_policy.name": "tis"},
     "preference_setup", "trainer.mode sync"),
    ({"algorithm.turn_credit": True, "rollout.env.name": "calculator", "algorithm.advantage.name": "reinforce_pp"},
     "environment_usable", "grpo, dr_grpo, rloo"),
    ({"algorithm.off_policy.name": "tis", "rollout.sampling.top_p": 0.9}, "sampler_logprobs_comparable", "top_p=1.0"),
    ({"cluster.colocate": True, "learner.num_ranks": 2}, "colocation_pairs", "rollout.num_workers = learner.num_ranks"),
    ({"cluster.colocate": True, "trainer.mode": "async", "algorithm.off_policy.name": "tis"}, "colocation_pairs",
     "trainer.mode=sync"),
    ({"cluster.colocate": True, "rollout.placement.strategy": "spread"}, "colocation_pairs", "learner.placement"),
    ({"cluster.colocate": True, "rollout.autoscale.enabled": True, "rollout.autoscale.max_workers": 2},
     "colocation_pairs", "rollout.autoscale.enabled=false"),
    ({"cluster.num_cpus": 8, "rollout.placement.node_labels": "{relayrl/role: rollout}"}, "resources_fit",
     "no node of the local cluster (cluster.num_cpus) carries the labels"),
    ({"cluster.num_cpus": 2, "cluster.colocate": True}, "resources_fit",
     "learner 1 x 2 (learner.num_ranks x learner.cpus_per_rank + rollout.cpus_per_worker)"),
])
def test_named_checks_say_what_to_change(over, check, hint):
    cfg = good(**over)
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    assert f"[{check}]" in str(e.value)
    assert hint in str(e.value)


def test_all_failures_reported_at_once():
    with pytest.raises(ConfigError) as e:
        validate(good(**{"rollout.n": 1, "trainer.mode": "async"}))
    assert "[group_size_for_group_estimator]" in str(e.value) and "[async_needs_off_policy_correction]" in str(e.value)


def test_async_with_correction_validates():
    cfg = validate(good(**{"trainer.mode": "async", "algorithm.off_policy.name": "tis"}))
    assert cfg.trainer.mode == "async"
    with pytest.raises(ConfigError, match="max_staleness"):
        validate(good(**{"trainer.mode": "async", "algorithm.off_policy.name": "tis", "buffer.max_staleness": -1}))


def test_colocated_pairs_validate_and_reserve_one_bundle_each():
    cfg = validate(good(**{"cluster.colocate": True, "learner.num_ranks": 2, "rollout.num_workers": 2,
                           "cluster.num_cpus": 5}))
    [learner, reward] = demand(cfg)  # the rollout workers live in the learner's bundles
    assert (learner.name, learner.actors, learner.cpus) == ("learner", 2, 2.0) and reward.name == "reward"


def test_every_check_can_fire():
    # Each named check is exercised by test_named_checks_say_what_to_change or model/data tests.
    assert {"choices_exist", "batch_divides_ranks", "model_and_data_given"} <= set(CHECKS)


def test_missing_data_file_named():
    cfg = good(**{"data.train_files": "[nope/missing.jsonl]"})
    with pytest.raises(ConfigError, match="nope/missing.jsonl"):
        validate(cfg)


def test_resolved_config_round_trips(tmp_path):
    cfg = good(**{"trainer.total_steps": 5})
    dump_config(cfg, tmp_path / "c.yaml")
    again = load_config(tmp_path / "c.yaml")
    assert to_yaml(again) == to_yaml(cfg)


def test_gsm8k_config_needs_a_model_path(tmp_path):
    with pytest.raises(ConfigError, match="model.path is empty"):
        validate(load_config("configs/gsm8k.yaml"))
    cfg = validate(load_config("configs/gsm8k.yaml", [f"model.path={tmp_path}"]))
    assert cfg.reward.functions[0].name == "math_verify" and cfg.data.chat_template


# ---- choice-valued fields: the valid values live on the field (learner.config.one_of) ----------------

SCHEMA_CHOICE_FIELDS = [where for where, _, _ in choice_fields(RunConfig())]


def test_choice_fields_found_in_every_package_schema():
    assert {"model.dtype", "data.bad_rows", "trainer.mode", "weight_sync.backend", "cluster.device",  # cluster/
            "rollout.dtype", "buffer.gfpo.metric",  # actors/
            "learner.zero_stage", "learner.dtype", "learner.optimizer.name", "learner.optimizer.schedule",  # learner/
            } <= set(SCHEMA_CHOICE_FIELDS)


@pytest.mark.parametrize("where", SCHEMA_CHOICE_FIELDS)
def test_every_choice_field_refuses_a_bad_value_naming_field_value_and_choices(where):
    cfg = good()
    *parents, name = where.split(".")
    setattr(functools.reduce(getattr, parents, cfg), name, "nope")  # past OmegaConf's typing (int fields too)
    valid = field_choices(functools.reduce(getattr, parents, RunConfig()), name)
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    shown = ", ".join(repr(v) if v == "" else str(v) for v in valid)
    assert f"[enum_values] invalid values: {where}='nope' (valid: {shown})" in str(e.value)


def test_every_default_is_a_valid_choice():
    assert all(value in ok for _, value, ok in choice_fields(RunConfig()))


@dataclasses.dataclass
class _Inner:
    kind: str = one_of("a", "b", default="a")


@dataclasses.dataclass
class _Outer:
    inner: _Inner = dataclasses.field(default_factory=_Inner)
    items: list[_Inner] = dataclasses.field(default_factory=list)


def test_a_new_choice_field_is_checked_with_no_list_elsewhere():
    """Nested and list-held dataclasses are walked; the field's metadata is the only list of choices."""
    found = list(choice_fields(_Outer(items=[_Inner(), _Inner(kind="c")])))
    assert found == [("inner.kind", "a", ("a", "b")), ("items[0].kind", "a", ("a", "b")), ("items[1].kind", "c", ("a", "b"))]


def test_choice_fields_stay_omegaconf_structured_configs():
    merged = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(_Outer), {"inner": {"kind": "b"}}))
    assert merged.inner.kind == "b" and field_choices(merged.inner, "kind") == ("a", "b")


def test_one_of_refuses_a_default_outside_its_choices():
    with pytest.raises(ValueError, match="not one of"):
        one_of("a", "b", default="c")


def test_a_warm_start_turned_off_ignores_its_target():
    """demo_moe.yaml ships a target accuracy; starting from an exported warm start (steps=0) must validate."""
    cfg = load_config("configs/demo_moe.yaml", ["trainer.warm_start.steps=0"])
    assert cfg.trainer.warm_start.target_accuracy > 0
    validate(cfg)

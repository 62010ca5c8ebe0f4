"""What goes into a vLLM engine request and what comes out of it, as relayrl's Samples hold it: the
prompt input, the per-prompt seed, per completion its sampled logprobs, per-token weight versions
and finish reason, and a request's MoE routing taken from the capture. Shared by the single-turn
worker (actors/rollout.py) and the multi-turn loop (actors/multi_turn.py); no vLLM import."""

from __future__ import annotations

from typing import Any

# vLLM finish reasons -> the three the rest of the system knows ("abort" also covers engine errors).
_FINISH_REASONS = {"stop": "stop", "length": "length"}


def finish_reason(vllm_reason: Any) -> str:
    """"stop", "length" or "abort" (any other reason vLLM gives, engine errors included)."""
    return _FINISH_REASONS.get(vllm_reason, "abort")


def request_seed(seed: int) -> int:
    """Spread a per-prompt seed over [0, 2^31 - 2^16).

    vLLM gives the n completions of a request the seeds s, s+1, ..., s+n-1, so consecutive prompt seeds
    (s, s+1) would share n-1 random streams between two prompts. A 64-bit mix (splitmix64's
    finaliser) makes such overlaps vanishingly unlikely while staying a pure function of the seed.
    """
    z = (seed + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    z ^= z >> 31
    return int(z % ((1 << 31) - (1 << 16)))


def token_versions(spans: Any, num_tokens: int, current: int) -> list[int]:
    """Per response token, the weight version that sampled it, from vLLM's spans ([start, end) tokens
    sampled by weights labelled `version`). No spans (no token, or no label reported): `current`."""
    out = [current] * num_tokens
    for span in spans or ():
        out[span.start:span.end] = [int(span.version)] * (span.end - span.start)
    return out


def taken_routing(taken: dict[str, Any]) -> Any:
    """The routing one request's `routing_take` item carries (numpy [tokens, MoE layers, top_k],
    actors/routing_capture.py), or None when routing is not recorded."""
    if "routing" not in taken:
        return None
    import numpy as np

    return np.frombuffer(taken["routing"], dtype=taken["dtype"]).reshape(taken["shape"])


def engine_input(prompt: dict[str, Any]) -> Any:
    """The engine's input for a prompt dict: its token ids if given, else its text."""
    if "prompt_id" not in prompt:
        raise KeyError(f"prompt dict needs a 'prompt_id' (keys: {sorted(prompt)})")
    if prompt.get("prompt_ids") is not None:
        return {"prompt_token_ids": list(prompt["prompt_ids"])}
    if prompt.get("prompt") is None:
        raise KeyError(f"prompt {prompt['prompt_id']!r} needs 'prompt' (text) or 'prompt_ids'")
    return prompt["prompt"]


def sampled_logprobs(lps: Any, token_ids: list[int]) -> list[float]:
    """The sampled tokens' logprobs. With logprobs=0 and flat logprobs, vLLM keeps exactly one entry per
    position (the sampled token), so the flat list is the answer; otherwise look each token up."""
    if lps is None:
        raise RuntimeError("vLLM returned no logprobs (SamplingParams.logprobs must be 0)")
    flat = getattr(lps, "logprobs", None)
    if flat is not None and len(flat) == len(token_ids) and list(lps.token_ids) == token_ids:
        return list(flat)
    return [lps[i][t].logprob for i, t in enumerate(token_ids)]

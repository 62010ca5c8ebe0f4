"""ModelRewardScorer: a sequence-classification reward model that scores prompt + completion.

A plain class holding one Hugging Face `AutoModelForSequenceClassification` loaded from a local
directory (cluster/ wraps it as a Ray actor: loading once per actor is why it is not a registry
function). torch and transformers are imported when it is constructed, never at module import.

Texts are scored in batches with padding; the model reads the logit at the last non-pad token of
each row, so results do not depend on the batch size or the padding side (tested).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence


class ModelRewardScorer:
    def __init__(self, model_path: str, batch_size: int = 8, max_length: int = 2048, device: str = "cpu",
                 dtype: Optional[str] = None, label_index: int = 0, chat_template: bool = False):
        """label_index: which logit is the reward (num_labels == 1 models: 0).
        chat_template: format (prompt, completion) as a user/assistant chat with the RM's own
        tokenizer template instead of concatenating the two strings."""
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size, self.max_length, self.device = batch_size, max_length, device
        self.label_index, self.chat_template = label_index, chat_template
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        kwargs = {"dtype": getattr(torch, dtype)} if dtype else {}
        self.model = AutoModelForSequenceClassification.from_pretrained(model_path, **kwargs).to(device).eval()
        if self.model.config.pad_token_id is None:  # needed to find each row's last real token
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        if not 0 <= label_index < self.model.config.num_labels:
            raise ValueError(f"label_index {label_index} out of range for a model with {self.model.config.num_labels} labels")

    def text(self, prompt: str, completion: str) -> str:
        if not self.chat_template:
            return prompt + completion
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
        return self.tokenizer.apply_chat_template(messages, tokenize=False)

    def score_texts(self, texts: Sequence[str]) -> list[float]:
        import torch

        scores: list[float] = []
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                enc = self.tokenizer(list(texts[start:start + self.batch_size]), padding=True, truncation=True,
                                     max_length=self.max_length, return_tensors="pt").to(self.device)
                logits = self.model(**enc).logits
                scores.extend(logits[:, self.label_index].float().tolist())
        return scores

    def score(self, samples: Sequence[Any]) -> list[float]:
        """One float per sample, from sample.prompt + sample.response."""
        return self.score_texts([self.text(s.prompt, s.response) for s in samples])

    def score_group(self, group: Any, weight: float = 1.0) -> Any:
        """Add the model's score to each sample of a (rule-scored) group as component "model".

        A sample whose rule scoring already failed keeps reward 0: its error stands.
        """
        for s, value in zip(group.samples, self.score(group.samples)):
            s.reward_components["model"] = value
            if s.reward_error is None:
                s.reward += weight * value
        return group

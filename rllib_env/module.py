"""`RouterRLModule`: the RLlib module around the same `RouterPolicy` network inference uses.

The policy head is a `pipeline.policy.RouterPolicy` (an MLP on the feature vector → logits,
action 0 = keep the draft); a separate value MLP serves PPO's critic (`ValueFunctionAPI`).
Exporting is `module.policy.save(folder)`: no conversion between training and serving.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from ray.rllib.core.columns import Columns
from ray.rllib.core.rl_module.apis import ValueFunctionAPI
from ray.rllib.core.rl_module.torch import TorchRLModule
from torch import nn

from pipeline.policy import RouterPolicy, mlp_body

__all__ = ["RouterRLModule"]


class RouterRLModule(TorchRLModule, ValueFunctionAPI):
    """`model_config`: {"hidden_sizes": [64, 64], "initial_escalation": 0.5} and, optionally,
    "feature_mean" / "feature_std" (per-feature statistics the inputs are standardized with; see
    `rllib_env.train.feature_statistics`) and "warm_start" (a `RouterPolicy` folder whose weights
    and statistics the policy starts from; see `rllib_env.train.warm_start`)."""

    def setup(self) -> None:
        hidden = tuple(self.model_config.get("hidden_sizes", (64, 64)))
        num_features = int(self.observation_space.shape[0])
        self.policy = RouterPolicy(hidden, int(self.action_space.n), num_features)
        # Start at p(escalate) ≈ initial_escalation whatever the features say: PPO then learns
        # from there which steps are worth the large model.
        p = float(self.model_config.get("initial_escalation", 0.5))
        with torch.no_grad():
            self.policy.head.weight.mul_(0.01)
            self.policy.head.bias.zero_()
            self.policy.head.bias[1:] = math.log(p / (1 - p)) - math.log(self.action_space.n - 1)
        if "feature_mean" in self.model_config:
            self.policy.set_feature_statistics(
                self.model_config["feature_mean"], self.model_config["feature_std"]
            )
        if "warm_start" in self.model_config:  # a fitted RouterPolicy folder (pipeline.labels)
            start = RouterPolicy.load(self.model_config["warm_start"])
            self.policy.load_state_dict(start.state_dict())
        body, width = mlp_body(num_features, hidden)
        self.value_net = nn.Sequential(*body, nn.Linear(width, 1))

    def _forward(self, batch: dict[str, Any], **kwargs) -> dict[str, Any]:
        return {Columns.ACTION_DIST_INPUTS: self.policy(batch[Columns.OBS].float())}

    def compute_values(self, batch: dict[str, Any], embeddings: Any = None) -> torch.Tensor:
        obs = self.policy.standardize(batch[Columns.OBS].float())
        return self.value_net(obs).squeeze(-1)

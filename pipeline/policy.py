"""`RouterPolicy`: the small torch network that maps an observation to p(escalate).

The RLlib module wraps this same network, so trained weights export without conversion. With
no hidden layers it is a logistic regression on the features; `RouterPolicy.hand_set()` gives
one with hand-chosen weights, which exercises the `policy` rule before any training.
`load_policy` is the one reader of what a config or a command line names as a policy: a saved
folder, or `HAND_SET` for the hand-set one.

Inputs are standardized with per-feature statistics measured before training
(`set_feature_statistics`; identity until set): the features live in [0, 1] but some vary over a
narrow band (a question's length), and a network sees such a feature only once it is rescaled.

Saved as a folder: `policy.pt` (state dict, the statistics included) + `policy.json` (its own
config: feature names, hidden sizes, number of actions), so a checkpoint carries what is needed
to load it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from pipeline.features import FEATURE_NAMES, NUM_FEATURES

__all__ = ["HAND_SET", "RouterPolicy", "load_policy", "mlp_body"]

HAND_SET = "hand_set"  # names the hand-set linear policy where a policy folder could go


def mlp_body(width: int, hidden_sizes: tuple[int, ...]) -> tuple[nn.Sequential, int]:
    """Linear + tanh layers of the given sizes; returns the stack and its output width."""
    layers: list[nn.Module] = []
    for size in hidden_sizes:
        layers += [nn.Linear(width, size), nn.Tanh()]
        width = size
    return nn.Sequential(*layers), width


class RouterPolicy(nn.Module):
    def __init__(
        self,
        hidden_sizes: tuple[int, ...] = (64, 64),
        num_actions: int = 2,
        num_features: int = NUM_FEATURES,
        num_named: int | None = None,
    ) -> None:
        super().__init__()
        self.hidden_sizes = tuple(hidden_sizes)
        self.num_actions = num_actions
        self.num_features = num_features
        # Named features among the inputs (the rest: a draft embedding); fewer than today's
        # FEATURE_NAMES for a policy trained before features were appended.
        self.num_named = min(num_features, NUM_FEATURES) if num_named is None else num_named
        self.body, width = mlp_body(num_features, self.hidden_sizes)
        self.head = nn.Linear(width, num_actions)  # logits: action 0 = keep the draft
        self.register_buffer("feature_mean", torch.zeros(num_features))
        self.register_buffer("feature_std", torch.ones(num_features))

    def set_feature_statistics(self, mean, std) -> None:
        with torch.no_grad():
            self.feature_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
            self.feature_std.copy_(torch.as_tensor(std, dtype=torch.float32))

    def standardize(self, obs: torch.Tensor) -> torch.Tensor:
        return (obs - self.feature_mean) / self.feature_std

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.standardize(obs)))

    @torch.no_grad()
    def escalation_probability(self, features) -> torch.Tensor:
        """p(any larger model writes the step) for a batch of feature rows, in float64.

        Summed over the escalating actions from float64 logits, not 1 − p(keep) in float32:
        a confident policy's p(keep) rounds to 1 in float32, and 1 − p(keep) collapses the
        drafts it is sure of onto a few values (0, 6e-8, 1.2e-7, ...) that no threshold can
        separate. This way scores keep their order down to ~1e-300."""
        obs = torch.as_tensor(features, dtype=torch.float32).reshape(len(features), -1)
        # The named features this policy knows come first; features named after it was trained
        # are skipped; a draft embedding (the columns after all named ones) follows.
        embedding = self.num_features - self.num_named
        inputs = obs[:, : self.num_named]
        if embedding:
            inputs = torch.cat([inputs, obs[:, NUM_FEATURES : NUM_FEATURES + embedding]], 1)
        logits = self(inputs).double()
        return torch.softmax(logits, dim=-1)[:, 1:].sum(-1)

    # ------------------------------------------------------------------ hand-set baseline

    @classmethod
    def hand_set(cls) -> RouterPolicy:
        """A logistic rule by hand: escalate unsure drafts, more so late in the trajectory."""
        policy = cls(hidden_sizes=())
        weights = dict.fromkeys(FEATURE_NAMES, 0.0) | {
            "draft/mean_prob": -12.0,
            "draft/min_prob": -4.0,
            "draft/mean_entropy": 3.0,
            "traj/step_fraction": 2.0,
            "traj/min_draft_prob_so_far": -1.0,
        }
        with torch.no_grad():
            policy.head.weight.zero_()
            policy.head.bias.zero_()
            policy.head.weight[1] = torch.tensor([weights[name] for name in FEATURE_NAMES])
            policy.head.bias[1] = 12.0
        return policy

    # ------------------------------------------------------------------ persistence

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(self.state_dict(), folder / "policy.pt")
        meta = {
            "hidden_sizes": list(self.hidden_sizes),
            "num_actions": self.num_actions,
            "feature_names": list(FEATURE_NAMES[: self.num_named]),
            "num_features": self.num_features,  # more than the names: a draft embedding follows
        }
        (folder / "policy.json").write_text(json.dumps(meta, indent=2))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> RouterPolicy:
        folder = Path(folder)
        meta_path = folder / "policy.json"
        if not meta_path.exists():
            raise FileNotFoundError(
                f"{folder} holds no policy (policy.json missing); fix: point to a folder "
                "written by RouterPolicy.save or by `steproute train`"
            )
        meta = json.loads(meta_path.read_text())
        names = tuple(meta["feature_names"])
        if names != FEATURE_NAMES[: len(names)]:
            raise ValueError(
                f"policy in {folder} was trained on features {list(names)}, which do not match "
                f"this version's FEATURE_NAMES prefix; retrain it"
            )
        width = int(meta.get("num_features", len(names)))
        policy = cls(tuple(meta["hidden_sizes"]), meta["num_actions"], width, len(names))
        state = torch.load(folder / "policy.pt", weights_only=True)
        # Policies saved before inputs were standardized have no statistics: identity.
        state = {"feature_mean": policy.feature_mean, "feature_std": policy.feature_std} | state
        policy.load_state_dict(state)
        policy.eval()
        return policy


def load_policy(where: str | Path | None) -> RouterPolicy:
    """The policy that `where` names: None or `HAND_SET` = `RouterPolicy.hand_set()`, anything
    else a folder written by `RouterPolicy.save`."""
    if where is None or where == HAND_SET:
        return RouterPolicy.hand_set()
    folder = Path(where)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"no policy folder at {folder.resolve()}; fix: point to a folder written by "
            f"`steproute train`, or use '{HAND_SET}' for the hand-set linear policy"
        )
    return RouterPolicy.load(folder)

"""The DAA paper's toy MDP: direct alignment moves probability onto trajectories outside its data.

    python jobs/toy_mdp.py --out runs/toy_mdp          # writes toy_mdp.png and toy_mdp.json (seconds, CPU)

Why (Rafailov et al. 2024, "Scaling Laws for Reward Model Overoptimization in Direct Alignment
Algorithms", the section on out-of-distribution trajectories): a DAA loss depends on the policy only
through the log-ratios log pi(y)/pi_ref(y) of the responses *in the preference data*. Nothing in it
pins the probability of responses that never appear there, so training is free to move mass onto
them, and the weaker the implicit KL regularisation (smaller beta) the further it goes.

The MDP. Responses are token sequences over ``vocab`` = (a, b) of length 0..``max_length`` = 3. A
state is the prefix generated so far; in it the policy picks a token or EOS. EOS (or reaching
``max_length``) leads to the absorbing end state, so every trajectory is a root-to-leaf path of a tree
(15 of them) and  log pi(y) = sum over the path's (state, action) of log pi(action | state).

The policy. Log-linear in features of the state that are shared across states, as they are in any
sequence model: the last token (or none), the depth, and a bias, so logits(state) = features(state) @ W.
The reference is a fixed random W, tilted so that it mostly answers with two tokens. For contrast the
same training is also run with a tabular policy (one free logit vector per state: no sharing at all).

The data. A fixed, finite preference list that only mentions the four two-token answers: the
labeller prefers alternation, "ab" over "aa" and "ba" over "bb" (``PAIRS``). The other 11 trajectories
are "outside the data". Each objective of ``overopt.objectives`` (DPO, IPO, SLiC) is trained on that
list with full-batch Adam from the reference at betas 0.01, 0.1 and 0.5, and the probability the policy
puts outside the data is recorded during training. (All runs are trained at once as one batch of
independent parameters; the objectives are functions of beta*h, so each is evaluated with beta = 1 on
beta-scaled log-probs, which is the same loss.)

What it shows (seed 0; the unit test checks the orderings): with shared features the preference for
alternation generalises to the third position, where no preference constrains it, and the policy moves
its mass onto "aba"/"bab" (outside the data): at beta 0.01 every objective ends with ~all of it outside;
at beta 0.5 IPO and SLiC stop where their target margin is met, near the reference's outside mass, while
DPO (no finite optimum) keeps drifting. A tabular policy, with nothing shared, instead concentrates its
mass on the chosen answers: the leak is a generalisation effect, as in a language model.

The three-response example. One prompt, responses y1, y2, y3, data "y1 beats y2" 3 times and "y2
beats y1" once (finite, noisy labels): y3 never appears. The empirical DPO loss depends only on
h = log pi(y1)/pi_ref(y1) - log pi(y2)/pi_ref(y2) and is minimised at beta*h = log 3, with minimum
-(3/4) log(3/4) - (1/4) log(1/4). Every policy with that ratio is a minimiser, whatever it gives y3:
two policies constructed with different pi(y3), and two trained from different starts, reach the same
minimal loss and differ.

Pure torch/numpy; no Ray. ``run_toy_mdp`` returns the numbers (JSON-safe), ``write_toy_mdp`` also
draws the figure.
One module: the MDP, its training runs, the three-response example and the figure are one
self-contained demonstration (jobs/toy_mdp.py, and every report draws it).
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from overopt.objectives import compute_objective

BETAS = (0.01, 0.1, 0.5)
OBJECTIVES = ("dpo", "ipo", "slic")
PARAMETRISATIONS = ("shared", "tabular")
EOS = "<eos>"
# (chosen, rejected): the labeller prefers alternation. Only the four two-token answers appear.
PAIRS = (("ab", "aa"), ("ba", "bb"))


# ----------------------------------------------------------------------------------------------
# The tree MDP


@dataclass(frozen=True)
class TreeMDP:
    """All trajectories of a tree MDP and, for each, the (state, action) cells on its path."""

    vocab: tuple[str, ...]
    max_length: int
    states: tuple[tuple[str, ...], ...]  # non-terminal prefixes (length < max_length)
    actions: tuple[str, ...]  # (EOS, *vocab)
    trajectories: tuple[tuple[str, ...], ...]  # every complete response
    path_matrix: torch.Tensor  # [n_trajectories, n_states * n_actions] 0/1: cells on each path

    @classmethod
    def build(cls, vocab: tuple[str, ...] = ("a", "b"), max_length: int = 3) -> TreeMDP:
        states = tuple(p for n in range(max_length) for p in itertools.product(vocab, repeat=n))
        trajectories = tuple(p for n in range(max_length + 1) for p in itertools.product(vocab, repeat=n))
        actions = (EOS, *vocab)
        state_index = {s: i for i, s in enumerate(states)}
        matrix = torch.zeros(len(trajectories), len(states) * len(actions), dtype=torch.float64)
        for t, trajectory in enumerate(trajectories):
            for k, token in enumerate(trajectory):
                matrix[t, state_index[trajectory[:k]] * len(actions) + actions.index(token)] = 1.0
            if len(trajectory) < max_length:  # ends by choosing EOS; at max_length the end is forced
                matrix[t, state_index[trajectory] * len(actions)] = 1.0
        return cls(tuple(vocab), max_length, states, actions, trajectories, matrix)

    def log_probs(self, logits: torch.Tensor) -> torch.Tensor:
        """Trajectory log-probs [..., n_trajectories] from state logits [..., n_states, n_actions]."""
        cells = torch.log_softmax(logits, dim=-1).flatten(-2)
        return cells @ self.path_matrix.T

    def features(self, parametrisation: str) -> torch.Tensor:
        """State features [n_states, n_features]: shared (last token, depth, bias) or tabular (one-hot)."""
        if parametrisation == "tabular":
            return torch.eye(len(self.states), dtype=torch.float64)
        if parametrisation != "shared":
            raise ValueError(f"unknown parametrisation {parametrisation!r}; valid: {', '.join(PARAMETRISATIONS)}")
        rows = []
        for state in self.states:
            last = np.zeros(len(self.vocab) + 1)
            last[0 if not state else 1 + self.vocab.index(state[-1])] = 1.0
            depth = np.zeros(self.max_length)
            depth[len(state)] = 1.0
            rows.append(np.concatenate([last, depth, [1.0]]))
        return torch.tensor(np.array(rows), dtype=torch.float64)

    def index(self, text: str) -> int:
        """'ab' -> the index of trajectory ('a', 'b'); '' is the empty response."""
        return self.trajectories.index(tuple(text))

    def name(self, index: int) -> str:
        return "".join(self.trajectories[index]) or "(empty)"


def reference_weights(mdp: TreeMDP, parametrisation: str, seed: int = 0) -> torch.Tensor:
    """A fixed random reference [n_features, n_actions] that mostly answers with max_length - 1 tokens."""
    generator = torch.Generator().manual_seed(seed)
    features = mdp.features(parametrisation)
    weights = 0.5 * torch.randn(features.shape[1], len(mdp.actions), generator=generator, dtype=torch.float64)
    # EOS tilted by depth: unlikely before the second-to-last position, likely there.
    tilt = torch.tensor([-1.5] * (mdp.max_length - 1) + [1.5], dtype=torch.float64)
    if parametrisation == "shared":  # features: last token (len(vocab) + 1), depth (max_length), bias
        weights[len(mdp.vocab) + 1 : len(mdp.vocab) + 1 + mdp.max_length, 0] += tilt
    else:
        weights[:, 0] += tilt[[len(state) for state in mdp.states]]
    return weights


def _pair_indices(mdp: TreeMDP, pairs) -> tuple[torch.Tensor, torch.Tensor]:
    chosen = torch.tensor([mdp.index(c) for c, _ in pairs])
    rejected = torch.tensor([mdp.index(r) for _, r in pairs])
    return chosen, rejected


def in_data_mask(mdp: TreeMDP, pairs) -> torch.Tensor:
    mask = torch.zeros(len(mdp.trajectories), dtype=torch.bool)
    for chosen, rejected in pairs:
        mask[mdp.index(chosen)] = mask[mdp.index(rejected)] = True
    return mask


def train_runs(
    mdp: TreeMDP,
    pairs,
    runs: list[tuple[str, float]],
    parametrisation: str = "shared",
    seed: int = 0,
    steps: int = 400,
    lr: float = 0.05,
    record_every: int = 10,
) -> list[dict]:
    """Full-batch Adam on each (objective, beta) of ``runs`` from the reference, all runs as one batch.

    Every run has its own copy of the weights; Adam is element-wise, so the runs do not interact.
    Returns, per run, the recorded steps, the mass outside the data and the loss, and the final policy.
    """
    features = mdp.features(parametrisation)
    reference = reference_weights(mdp, parametrisation, seed)
    chosen, rejected = _pair_indices(mdp, pairs)
    outside = ~in_data_mask(mdp, pairs)
    reference_logps = mdp.log_probs(features @ reference)
    weights = reference.expand(len(runs), *reference.shape).clone().requires_grad_(True)
    optimizer = torch.optim.Adam([weights], lr=lr)
    betas = torch.tensor([beta for _, beta in runs], dtype=torch.float64)[:, None]
    groups = {objective: [i for i, (o, _) in enumerate(runs) if o == objective] for objective in dict.fromkeys(o for o, _ in runs)}

    def losses(logps: torch.Tensor) -> torch.Tensor:
        total = logps.new_zeros(())
        for objective, index in groups.items():
            scale = betas[index]  # beta folded into the log-probs: each loss is a function of beta*h
            out = compute_objective(
                objective,
                1.0,
                (scale * logps[index][:, chosen]).flatten(),
                (scale * logps[index][:, rejected]).flatten(),
                (scale * reference_logps[chosen]).expand(len(index), -1).flatten(),
                (scale * reference_logps[rejected]).expand(len(index), -1).flatten(),
            )
            total = total + out.loss * len(index)  # = the sum over runs of each run's mean loss
        return total

    def per_run_loss(logps: torch.Tensor) -> list[float]:
        values = []
        for i, (objective, beta) in enumerate(runs):
            out = compute_objective(
                objective, beta, logps[i, chosen], logps[i, rejected], reference_logps[chosen], reference_logps[rejected]
            )
            values.append(float(out.loss))
        return values

    recorded: list[int] = []  # the steps recorded, and per step one value per run:
    outside_mass: list[list[float]] = []
    loss: list[list[float]] = []
    for step in range(steps + 1):
        logps = mdp.log_probs(features @ weights)
        if step % record_every == 0 or step == steps:
            with torch.no_grad():
                recorded.append(step)
                outside_mass.append(logps.exp()[:, outside].sum(-1).tolist())
                loss.append(per_run_loss(logps))
        if step == steps:
            break
        optimizer.zero_grad()
        losses(logps).backward()
        optimizer.step()
    final = mdp.log_probs(features @ weights.detach()).exp()
    return [
        {
            "objective": objective,
            "beta": beta,
            "parametrisation": parametrisation,
            "steps": recorded,
            "outside_mass": [row[i] for row in outside_mass],
            "loss": [row[i] for row in loss],
            "final_outside_mass": outside_mass[-1][i],
            "policy": final[i].tolist(),
        }
        for i, (objective, beta) in enumerate(runs)
    ]


# ----------------------------------------------------------------------------------------------
# The three-response example


def three_response_example(beta: float = 0.5, wins: int = 3, losses: int = 1, steps: int = 400, lr: float = 0.1) -> dict:
    """Different policies with the same, minimal DPO loss on data that never mention y3."""
    reference = torch.tensor([0.4, 0.4, 0.2], dtype=torch.float64)
    # the data: y1 > y2 `wins` times, y2 > y1 `losses` times; y3 (index 2) never appears
    chosen = torch.tensor([0] * wins + [1] * losses)
    rejected = torch.tensor([1] * wins + [0] * losses)
    p = wins / (wins + losses)
    minimum = -(p * math.log(p) + (1 - p) * math.log(1 - p))
    beta_h = math.log(wins / losses)

    def loss_of(policy: torch.Tensor) -> float:
        logps, ref = torch.log(policy), torch.log(reference)
        return float(compute_objective("dpo", beta, logps[chosen], logps[rejected], ref[chosen], ref[rejected]).loss)

    # Constructed: pi(y1)/pi(y2) = (pi_ref(y1)/pi_ref(y2)) * exp(log 3 / beta); the rest goes to y3.
    ratio = float(reference[0] / reference[1]) * math.exp(beta_h / beta)
    constructed = {}
    for label, p3 in (("pi(y3) = 0.01", 0.01), ("pi(y3) = 0.9", 0.9)):
        p2 = (1 - p3) / (1 + ratio)
        policy = torch.tensor([1 - p3 - p2, p2, p3], dtype=torch.float64)
        constructed[label] = {"policy": policy.tolist(), "loss": loss_of(policy)}

    # Trained: Adam on softmax logits from two different starts.
    trained = {}
    for label, shift in (("from the reference", 0.0), ("from a start favouring y3", 3.0)):
        logits = (torch.log(reference) + torch.tensor([0.0, 0.0, shift], dtype=torch.float64)).requires_grad_(True)
        optimizer = torch.optim.Adam([logits], lr=lr)
        for _ in range(steps):
            logps = torch.log_softmax(logits, -1)
            ref = torch.log(reference)
            loss = compute_objective("dpo", beta, logps[chosen], logps[rejected], ref[chosen], ref[rejected]).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        policy = torch.softmax(logits.detach(), -1)
        trained[label] = {"policy": policy.tolist(), "loss": loss_of(policy)}

    def tv(a, b):
        return 0.5 * float(np.abs(np.array(a["policy"]) - np.array(b["policy"])).sum())

    return {
        "beta": beta,
        "reference": reference.tolist(),
        "data": f"y1 > y2 x{wins}, y2 > y1 x{losses}; y3 never appears",
        "minimal_loss": minimum,
        "beta_h_at_minimum": beta_h,
        "constructed": constructed,
        "trained": trained,
        "constructed_total_variation": tv(*constructed.values()),
        "trained_total_variation": tv(*trained.values()),
    }


# ----------------------------------------------------------------------------------------------
# Everything, as JSON-safe numbers and a figure


def run_toy_mdp(
    betas=BETAS,
    objectives=OBJECTIVES,
    parametrisations=PARAMETRISATIONS,
    steps: int = 400,
    lr: float = 0.05,
    seed: int = 0,
    pairs=PAIRS,
) -> dict:
    """Train every objective at every beta on the fixed pairs (per parametrisation); the three-response example."""
    mdp = TreeMDP.build()
    inside = in_data_mask(mdp, pairs)
    runs, references = [], {}
    for parametrisation in parametrisations:
        reference = mdp.log_probs(mdp.features(parametrisation) @ reference_weights(mdp, parametrisation, seed)).exp()
        references[parametrisation] = {"policy": reference.tolist(), "outside_mass": float(reference[~inside].sum())}
        grid = [(objective, beta) for objective in objectives for beta in betas]
        runs += train_runs(mdp, pairs, grid, parametrisation, seed=seed, steps=steps, lr=lr)
    return {
        "trajectories": [mdp.name(i) for i in range(len(mdp.trajectories))],
        "in_data": [mdp.name(i) for i in range(len(mdp.trajectories)) if inside[i]],
        "pairs": [list(p) for p in pairs],
        "reference": references,
        "optimizer": f"Adam lr {lr}, full batch, {steps} steps, from the reference (seed {seed})",
        "runs": runs,
        "three_response": three_response_example(),
    }


def summary_rows(numbers: dict) -> list[dict]:
    """One row per run: objective, beta, parametrisation, outside mass at the start and the end."""
    return [
        {
            "parametrisation": r["parametrisation"],
            "objective": r["objective"],
            "beta": r["beta"],
            "outside_start": r["outside_mass"][0],
            "outside_end": r["final_outside_mass"],
            "loss_end": r["loss"][-1],
        }
        for r in numbers["runs"]
    ]


def draw_toy_mdp(numbers: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(20, 4.2))
    betas = sorted({r["beta"] for r in numbers["runs"]})
    colours = dict(zip(betas, plt.cm.viridis(np.linspace(0, 0.85, len(betas)))))
    styles = dict(zip(OBJECTIVES, ["-", "--", ":"]))
    for ax, parametrisation in zip(axes[:2], PARAMETRISATIONS):
        for run in (r for r in numbers["runs"] if r["parametrisation"] == parametrisation):
            ax.plot(
                run["steps"],
                run["outside_mass"],
                styles.get(run["objective"], "-."),
                color=colours[run["beta"]],
                label=f"{run['objective']} beta={run['beta']:g}",
            )
        if parametrisation in numbers["reference"]:
            ax.axhline(numbers["reference"][parametrisation]["outside_mass"], color="grey", lw=0.8, ls=":", label="reference")
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("Adam step")
        ax.set_ylabel("probability outside the preference data")
        ax.set_title(
            {"shared": "shared features (as in a language model)", "tabular": "tabular policy (no sharing): for contrast"}.get(
                parametrisation, parametrisation
            ),
            fontsize=10,
        )
        ax.legend(fontsize=6, ncol=3)

    ax = axes[2]
    names = numbers["trajectories"]
    inside = set(numbers["in_data"])
    x = np.arange(len(names))
    shared = [r for r in numbers["runs"] if r["parametrisation"] == "shared" and r["objective"] == "dpo"]
    if shared and "shared" in numbers["reference"]:
        smallest = min(shared, key=lambda r: r["beta"])
        ax.bar(x - 0.2, numbers["reference"]["shared"]["policy"], 0.4, color="grey", label="reference")
        ax.bar(x + 0.2, smallest["policy"], 0.4, color="tab:red", label=f"DPO beta={smallest['beta']:g}, shared, final")
    ax.set_xticks(x, names, rotation=60, fontsize=8)
    for tick, name in zip(ax.get_xticklabels(), names):
        tick.set_color("black" if name in inside else "tab:red")
    ax.set_ylabel("probability")
    ax.set_title("Trajectories (red: outside the data)", fontsize=10)
    ax.legend(fontsize=7)

    ax = axes[3]
    example = numbers["three_response"]
    bars = [("reference", example["reference"])]
    bars += [(f"constructed {k}", v["policy"]) for k, v in example["constructed"].items()]
    bars += [(f"trained {k}", v["policy"]) for k, v in example["trained"].items()]
    width = 0.8 / len(bars)
    for i, (label, policy) in enumerate(bars):
        ax.bar(np.arange(3) + (i - (len(bars) - 1) / 2) * width, policy, width, label=label)
    ax.set_xticks(range(3), ["y1", "y2", "y3 (no data)"])
    losses = [v["loss"] for part in ("constructed", "trained") for v in example[part].values()]
    ax.set_title(f"DPO minimisers: losses {min(losses):.5f}..{max(losses):.5f} (min {example['minimal_loss']:.5f})", fontsize=9)
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_toy_mdp(out_dir: str | Path, **kwargs) -> tuple[Path, Path]:
    """Run the toy MDP and write ``toy_mdp.json`` and ``toy_mdp.png`` into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    numbers = run_toy_mdp(**kwargs)
    json_path = out_dir / "toy_mdp.json"
    json_path.write_text(json.dumps(numbers, indent=1))
    return json_path, draw_toy_mdp(numbers, out_dir / "toy_mdp.png")

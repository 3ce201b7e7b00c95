"""The DAA paper's toy MDP: probability mass moving outside the preference data, and two DPO minimisers.

    python jobs/toy_mdp.py --out runs/toy_mdp [--steps 400] [--seed 0]

Writes toy_mdp.json (every number) and toy_mdp.png into --out; pure torch on the CPU, a few seconds.
What it computes and why: platform/overopt/analysis/toy_mdp.py. jobs/analyze.py runs it into the
experiment directory when it is not there yet.
"""

import sys

from overopt.analysis.toy_mdp import write_toy_mdp
from overopt.cli import parser_for


def main(argv=None) -> int:
    parser = parser_for(__doc__)
    parser.add_argument("--out", required=True, help="directory for toy_mdp.json and toy_mdp.png")
    parser.add_argument("--steps", type=int, default=400, help="Adam steps per run")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random reference policy")
    args = parser.parse_args(argv)
    json_path, figure = write_toy_mdp(args.out, steps=args.steps, seed=args.seed)
    print(f"wrote {json_path} and {figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

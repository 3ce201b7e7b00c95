"""Export a policy the sweep kept (each trial's best evaluation by win rate, and its last) as a Hugging Face model.

    python jobs/export.py runs/smoke-<hash> --trial alignment_trial_1a2b3_00000 --out exported/smoke-dpo
    python jobs/export.py runs/smoke-<hash> --trial alignment_trial_1a2b3_00000 --step last --out exported/last
    python jobs/export.py s3://bucket/overopt/smoke-<hash> --list       # the trials with kept models

Writes a ``save_pretrained`` directory (safetensors in the training dtype, tokenizer, a generation_config.json
for plain sampling) with a README.md model card (objective, beta, step, epoch fraction, KL, win rate and
its interval, the judge): ``AutoModelForCausalLM.from_pretrained(OUT)`` loads it. Trial names are the
rows' ``trial_name`` (results.parquet); a wrong one prints the trials there are. No Ray.
Exit 0: exported (or listed); 2: nothing to export as asked.
"""

import sys

from overopt.cli import job, parser_for
from overopt.export import ExportError


@job(ExportError, FileNotFoundError)  # nothing to export as asked
def main(argv=None) -> int:
    parser = parser_for(__doc__)
    parser.add_argument("experiment", help="experiment directory (or storage URI) written by jobs/scale_sweep.py")
    parser.add_argument("--trial", help="the trial's name (results.parquet's trial_name); --list shows them")
    parser.add_argument("--step", default="best", help="best (highest win rate, the default), last, or a kept step number")
    parser.add_argument("--out", help="directory to write the model into (created if missing)")
    parser.add_argument("--list", action="store_true", help="list the trials with kept models and their kept steps, export nothing")
    args = parser.parse_args(argv)
    from overopt.export import describe_kept, export_policy, kept_trials
    from overopt.storage import Storage

    if args.list:
        print(describe_kept(kept_trials(Storage(args.experiment))))
        return 0
    if not args.trial or not args.out:
        parser.error("--trial and --out are required (or --list)")
    out = export_policy(args.experiment, args.trial, args.step, args.out)
    print(f"exported {args.trial} ({args.step}) to {out}: AutoModelForCausalLM.from_pretrained({str(out)!r})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

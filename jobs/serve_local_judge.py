"""Serve the local stand-in judge (OpenAI-compatible, 127.0.0.1) until interrupted.

    python jobs/serve_local_judge.py --port 8765
    # configs/local_tldr.yaml: judge {type: llm, base_url: http://127.0.0.1:8765/v1, model: local-judge}

What it prefers and why it exists: platform/overopt/evaluate/local_judge.py.
"""

import time

from overopt.cli import parser_for
from overopt.evaluate.local_judge import JudgeServer


def main(argv=None) -> int:
    parser = parser_for(__doc__)
    parser.add_argument("--port", type=int, default=8765, help="port on 127.0.0.1 (default 8765)")
    args = parser.parse_args(argv)
    server = JudgeServer(port=args.port).start()
    print(f"local judge serving {server.base_url} (Ctrl-C stops it)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""``python -m ibllm_agent.training.synthetic OUT [--seed S] [--n-train N] ...``: write a data set."""

from __future__ import annotations

import argparse
import json
import sys

from ibllm_agent.training.synthetic.generate import SyntheticConfig, generate

from ibllm_agent.errors import IbllmError


def main(argv: list[str] | None = None) -> int:
    d = SyntheticConfig()
    p = argparse.ArgumentParser(prog="python -m ibllm_agent.training.synthetic",
                                description="Write a deterministic synthetic data set (media + all formats) to OUT.")
    p.add_argument("out", help="output folder (created)")
    p.add_argument("--seed", type=int, default=d.seed, help="random seed (same seed: identical files)")
    p.add_argument("--n-train", type=int, default=d.n_train, help="tool-use episodes in the train split")
    p.add_argument("--n-val", type=int, default=d.n_val, help="episodes in the val split (seen tools)")
    p.add_argument("--n-test", type=int, default=d.n_test, help="episodes in the test split (unseen tools)")
    p.add_argument("--n-chat", type=int, default=d.n_chat, help="records in each of alpaca/llava/sharegpt")
    p.add_argument("--media-train", type=int, default=d.media_train, help="train files per modality")
    p.add_argument("--names-train", type=int, default=d.names_train,
                   help="extra unrendered train file names per modality for tool-use episodes")
    p.add_argument("--media-eval", type=int, default=d.media_eval, help="val and test files per modality")
    p.add_argument("--heldout-tool", action="append", default=None, metavar="NAME",
                   help=f"tool held out of training for the unseen split (repeatable; default: "
                        f"{', '.join(d.heldout_tools)}); one of the registered names")
    p.add_argument("--train-mix", action="append", default=None, metavar="KIND=WEIGHT",
                   help="the train split's episode mix (repeatable; kinds: tool, chain, modality, no_tool, "
                        f"function; default: the val/test mix {d.mix})")
    a = p.parse_args(argv)
    train_mix = None
    if a.train_mix:
        try:
            train_mix = {k.strip(): float(w) for k, w in (item.split("=", 1) for item in a.train_mix)}
        except ValueError:
            print(f"error: --train-mix takes KIND=WEIGHT, got {a.train_mix}", file=sys.stderr)
            return 2
    cfg = SyntheticConfig(seed=a.seed, n_train=a.n_train, n_val=a.n_val, n_test=a.n_test, n_chat=a.n_chat,
                          media_train=a.media_train, media_eval=a.media_eval, names_train=a.names_train,
                          heldout_tools=tuple(a.heldout_tool) if a.heldout_tool else d.heldout_tools,
                          train_mix=train_mix)
    try:
        manifest = generate(a.out, cfg)
    except IbllmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(manifest["counts"], indent=1))
    print(f"{len(manifest['files'])} files written to {a.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

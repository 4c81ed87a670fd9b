"""``python -m ibllm_agent.training STAGE --config FILE [--key value ...]`` (the torchrun entry point).

STAGE is a recipe (pretrain, finetune, tools, chat) or ``encode`` (compute the ImageBind features of the
config's data once, into ``--features DIR``). Every config field is an option; see ``--help``.
"""

from __future__ import annotations

import sys

USAGE = """usage: {prog} STAGE [--config FILE] [--key value ...]

STAGE: pretrain | finetune | tools | chat   train a recipe (under torchrun: one process per device)
       encode                               store the ImageBind features of the config's data in --features DIR

--config FILE   a YAML recipe (a bundled name such as finetune.yaml or tiny_finetune.yaml also works:
                {bundled})
Config fields (each may be given as --key value; lists comma-separated):
{fields}
"""


def usage(prog: str) -> str:
    from ibllm_agent.training.configs import bundled_configs, help_text

    return USAGE.format(prog=prog, bundled=", ".join(bundled_configs()), fields=help_text())


def main(argv: list[str] | None = None, prog: str = "python -m ibllm_agent.training") -> int:
    """Parse and run; returns the exit code. Typed errors print one line (exit 2)."""
    from ibllm_agent.training.configs import STAGES, load_config, parse_overrides

    from ibllm_agent.errors import IbllmError

    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help") or "--help" in args or "-h" in args:
        print(usage(prog))
        return 0
    stage, rest = args[0], args[1:]
    try:
        if stage not in (*STAGES, "encode"):
            raise_config(f"unknown stage {stage!r}; expected one of {', '.join((*STAGES, 'encode'))}")
        config = None
        if "--config" in rest:
            i = rest.index("--config")
            if i + 1 >= len(rest):
                raise_config("--config needs a file")
            config = rest[i + 1]
            rest = rest[:i] + rest[i + 2:]
        overrides = parse_overrides(rest)
        if stage == "encode":
            from ibllm_agent.training.features import encode_data

            cfg = load_config(None, config, overrides)
            report = encode_data(cfg)
            print(report.summary())
            return 0
        from ibllm_agent.training import run

        result = run(stage, config, **overrides)
    except IbllmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if result.release is not None or result.world_size == 1:
        last = f"{result.losses[-1]:.4f}" if result.losses else "n/a"
        print(f"{stage}: {result.steps} steps, final loss {last}, {result.data.summary()}")
        if result.checkpoint:
            print(f"checkpoint: {result.checkpoint}")
        if result.model_dir:
            print(f"exported: {result.release} and {result.model_dir}")
    return 0


def raise_config(message: str) -> None:
    from ibllm_agent.errors import ConfigError

    raise ConfigError(message)


if __name__ == "__main__":
    sys.exit(main())

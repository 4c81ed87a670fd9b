"""``ibllm-agent train STAGE --config FILE [--key value ...]``: the training recipes (``ibllm_agent.training``).

The option list is generated from ``TrainConfig``'s field docs, so ``--help`` always matches the config.
For several GPUs launch the same recipe with ``torchrun … -m ibllm_agent.training STAGE --config FILE``.
"""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command(
        name="train",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
        short_help="Train: pretrain, finetune, tools, chat recipes (and the encode step).",
    )
    def train_command(ctx: typer.Context) -> None:
        """Train ImageBind-LLM: ibllm-agent train STAGE --config FILE [--key value ...] (see --help)."""
        from ibllm_agent.training.__main__ import main

        code = main(list(ctx.args), prog="ibllm-agent train")
        raise typer.Exit(code)

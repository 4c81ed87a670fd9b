"""Decode speed of the bare LLaMA vs ``ImageBindLLM`` (same weights, injection on), and prefix reuse.

Run:  python benchmarks/decode.py                       # small CPU model, < 1 min on 2 cores
      python benchmarks/decode.py --hidden 1024 --layers 8 --device cuda --dtype bfloat16

Prints, in one run:
1. decode tokens/s through the engine (``ibllm_agent.model.generation.Generator``) for
   a) the bare ``transformers.LlamaForCausalLM``,
   b) ``ImageBindLLM`` built on the same base weights with the visual injection active (non-zero
      gates, a visual token bound into every step),
   and the injection overhead in % (target: <= 5 %);
2. prefill tokens computed vs reused over a simulated 3-step agent turn (each prompt = previous
   prompt + model output + an observation), with and without prefix reuse.

Decode time is measured as (time for N new tokens - time for 1 new token) / (N - 1), so the
prefill is excluded; EOS is masked so every run produces exactly N tokens. Variants are run
interleaved and the median of ``--repeats`` runs is reported (other processes share the CPU).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from ibllm_agent.model.generation import Generator, hf_step
from ibllm_agent.model.tokenizer import TINY_CORPUS, tiny_tokenizer
from ibllm_agent.types import Sampling


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hidden", type=int, default=256, help="hidden size (default 256)")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=None, help="GQA key/value heads (default = heads)")
    p.add_argument("--ffn", type=int, default=None, help="intermediate size (default LLaMA's 8/3·hidden)")
    p.add_argument("--vocab", type=int, default=512, help="tokenizer size (tiny SentencePiece)")
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=20, help="generations per variant, interleaved")
    p.add_argument("--agent-output-tokens", type=int, default=24, help="model output per agent step")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def lm_config(a: argparse.Namespace, ctx: int) -> dict:
    ffn = a.ffn or 64 * ((int(8 * a.hidden / 3) + 63) // 64)
    return {
        "hidden_size": a.hidden, "num_hidden_layers": a.layers, "num_attention_heads": a.heads,
        "num_key_value_heads": a.kv_heads or a.heads, "intermediate_size": ffn, "vocab_size": a.vocab,
        "rms_norm_eps": 1e-6, "max_position_embeddings": ctx, "tie_word_embeddings": False,
        "bos_token_id": 1, "eos_token_id": 2,
    }


def no_eos(step, eos: int):
    """Mask EOS so a random model always decodes the requested number of tokens."""

    def wrapped(*args):
        logits, cache = step(*args)
        logits[..., eos] = float("-inf")
        return logits, cache

    return wrapped


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Clock:
    """Wraps a step and records how long the model takes: each decode call and each prefill call."""

    def __init__(self, step, device: torch.device):
        self.step, self.device = step, device
        self.decode: list[float] = []  # seconds per one-token step
        self.prefill: list[float] = []
        self.engine = 0.0  # seconds spent inside the engine's iterator (model + engine work)

    def __call__(self, input_ids, attention_mask, position_ids, cache):
        start = time.perf_counter()
        out = self.step(input_ids, attention_mask, position_ids, cache)
        sync(self.device)
        spent = time.perf_counter() - start
        (self.decode if cache is not None and input_ids.shape[1] == 1 else self.prefill).append(spent)
        return out


def lockstep(gen: Generator, clocks: dict[str, Clock], prompt: list[int], sampling: Sampling) -> None:
    """Decode the same prompt once per variant, advancing the streams alternately, so that bursts
    of background load hit every variant alike (the machine may be shared)."""
    streams = {name: gen.stream(prompt, sampling, step=clock) for name, clock in clocks.items()}
    while streams:
        for name in list(streams):
            start = time.perf_counter()
            try:
                next(streams[name])
            except StopIteration:
                result = streams.pop(name).result
                assert result is not None and result.completion_tokens == sampling.max_new_tokens, result
            clocks[name].engine += time.perf_counter() - start


def build_models(a: argparse.Namespace, tok, device: torch.device, dtype: torch.dtype, ctx: int):
    """The bare LM and, when available, an ``ImageBindLLM`` carrying the same base weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = lm_config(a, ctx)
    torch.manual_seed(a.seed)
    bare = LlamaForCausalLM(LlamaConfig(**cfg)).to(device=device, dtype=dtype).eval()
    try:
        from ibllm_agent.model.config import ImageBindLLMConfig
        from ibllm_agent.model.llm import ImageBindLLM
    except ImportError as exc:  # the model package is optional for the engine figures
        print(f"[ImageBindLLM unavailable: {exc}] — only the bare model is measured")
        return bare, None, None
    config = ImageBindLLMConfig(lm=cfg, visual_dim=64, encoder="tiny_w3d", encoder_weights=None,
                                w_bias=False, w_lora=False, lora_rank=0, context_length=ctx)
    mm = ImageBindLLM(config, tokenizer=tok, device=device, dtype=dtype)
    missing, unexpected = mm.lm.load_state_dict(bare.state_dict(), strict=False)
    assert not unexpected and all(k.endswith(".gate") for k in missing), (missing, unexpected)
    mm.set_phase("inference")
    with torch.no_grad():
        for layer in mm.lm.model.layers:
            layer.self_attn.gate.fill_(0.5)  # injection active: tanh(0.5) ≈ 0.46 per head
        feats = torch.nn.functional.normalize(torch.randn(1, config.visual_dim, device=device), dim=-1)
        injection = mm.injection(mm.bind(feats.to(dtype)))
        # Same weights: without injection the logits are the bare model's; with it they move.
        ids = torch.tensor([[tok.bos_id, *range(3, 19)]], device=device)
        ref = bare(input_ids=ids).logits.float()
        off, on = mm(ids)[0].float(), mm(ids, visual=injection)[0].float()
    mm.logit_check = ((off - ref).abs().max().item(), (on - ref).abs().max().item())
    print(f"same base weights: max |logits(ImageBindLLM, no visual) - logits(bare)| = "
          f"{mm.logit_check[0]:.2e}; injection moves logits by up to {mm.logit_check[1]:.2e}")
    return bare, mm, injection


def decode_speed(a, tok, device, dtype, ctx):
    bare, mm, injection = build_models(a, tok, device, dtype, ctx)
    variants = {"bare LlamaForCausalLM": no_eos(hf_step(bare), tok.eos_id)}
    if mm is not None:
        def mm_step(input_ids, attention_mask, position_ids, cache):
            return mm(input_ids, visual=injection, attention_mask=attention_mask, position_ids=position_ids,
                      cache=cache, use_cache=True, logits_to_keep=1)

        variants["ImageBindLLM (injection on)"] = no_eos(mm_step, tok.eos_id)
    gen = Generator(hf_step(bare), tok, context_length=ctx, device=device, prefix_cache=False)
    g = torch.Generator().manual_seed(a.seed)
    prompt = [tok.bos_id] + torch.randint(3, tok.vocab_size, (a.prompt_tokens - 1,), generator=g).tolist()
    n = a.new_tokens
    lockstep(gen, {k: Clock(v, device) for k, v in variants.items()}, prompt,  # warm-up
             Sampling(max_new_tokens=min(n, 8), temperature=0))
    clocks = {name: Clock(step, device) for name, step in variants.items()}
    t0 = time.perf_counter()
    for r in range(a.repeats):  # alternate which variant steps first
        order = dict(reversed(clocks.items())) if r % 2 else clocks
        lockstep(gen, order, prompt, Sampling(max_new_tokens=n, temperature=0))
    wall = time.perf_counter() - t0
    print(f"\n== decode speed: prompt {a.prompt_tokens} tokens, {n} new tokens x {a.repeats} repeats, "
          f"variants in lockstep ({wall:.1f} s) ==")
    print(f"{'variant':28s} {'engine tok/s':>12s} {'step ms median':>14s} {'p10':>7s} "
          f"{'engine ms/tok':>13s} {'prefill ms':>10s}")
    # Model time per decoded token: median over every token of every repeat, and the 10th percentile
    # as the estimate of the undisturbed cost (background load only ever adds time).
    stats = {}
    for name, c in clocks.items():
        med, p10 = statistics.median(c.decode), statistics.quantiles(c.decode, n=10)[0]
        decode_time = c.engine - sum(c.prefill)  # engine time after the prefills
        tokens = len(c.decode) + a.repeats  # the first token of each run comes from the prefill
        engine_extra = (decode_time - sum(c.decode)) / tokens  # sampling, detokenising, bookkeeping
        stats[name] = (med, p10)
        print(f"{name:28s} {tokens / decode_time:12.1f} {1e3 * med:14.3f} {1e3 * p10:7.3f} "
              f"{1e3 * engine_extra:13.3f} {1e3 * statistics.median(c.prefill):10.1f}")
    figures: dict[str, float] = {"bare_tok_s": 1.0 / stats[next(iter(stats))][0]}
    if mm is not None:
        names = list(variants)
        (m0, q0), (m1, q1) = stats[names[0]], stats[names[1]]
        # Paired estimate: the k-th token of both variants ran back to back, so their ratio cancels
        # most background load; the median ratio is the headline figure.
        ratios = [y / x for x, y in zip(clocks[names[0]].decode, clocks[names[1]].decode)]
        paired = 100.0 * (statistics.median(ratios) - 1.0)
        over_med, over_p10 = 100.0 * (m1 / m0 - 1.0), 100.0 * (q1 / q0 - 1.0)
        verdict = "OK" if paired <= 5.0 else "ABOVE TARGET"
        print(f"injection overhead per decoded token: {paired:+.1f} % (median of paired ratios; "
              f"{over_med:+.1f} % from medians, {over_p10:+.1f} % from p10); target <= 5 %: {verdict}")
        figures.update(overhead_paired=paired, overhead_median=over_med, overhead_p10=over_p10,
                       no_visual_max_diff=mm.logit_check[0], injection_max_diff=mm.logit_check[1])
    return mm, injection, bare, figures


def agent_turn(a, tok, device, ctx, step) -> dict[str, float]:
    """3 agent steps; each prompt = previous prompt + output + observation. Reuse vs no reuse."""
    system = "\n".join(TINY_CORPUS[1:3]) + "\n"
    first = tok.encode(system + "Human: remove the cat from image/ab12cd34.png\nThought:")
    print(f"\n== prefix reuse over a 3-step agent turn (first prompt {len(first)} tokens, "
          f"{a.agent_output_tokens} output tokens per step) ==")
    rows = []
    for reuse in (False, True):
        gen = Generator(step, tok, context_length=ctx, device=device, prefix_cache=reuse)
        prompt, t0, per_step, outputs = list(first), time.perf_counter(), [], []
        for n in range(3):
            [res] = gen.generate([prompt], Sampling(max_new_tokens=a.agent_output_tokens, temperature=0),
                                 context_key="turn-1")
            per_step.append((res.prompt_tokens, res.prompt_tokens - res.reused_tokens, res.reused_tokens))
            outputs.append(res.token_ids)
            prompt = prompt + res.token_ids + tok.encode(f"\nObservation: image/{n}a{n}b.png\nThought:", bos=False)
        sync(device)
        rows.append((reuse, per_step, gen.stats.prefill_tokens_computed, gen.stats.prefill_tokens_reused,
                     time.perf_counter() - t0, outputs))
    print(f"{'prefix reuse':12s} {'step prompts':>18s} {'computed per step':>20s} "
          f"{'computed':>9s} {'reused':>7s} {'turn s':>7s}")
    for reuse, per_step, comp, used, secs, _ in rows:
        prompts = "/".join(str(p) for p, _, _ in per_step)
        computed = "/".join(str(c) for _, c, _ in per_step)
        print(f"{'on' if reuse else 'off':12s} {prompts:>18s} {computed:>20s} {comp:9d} {used:7d} {secs:7.2f}")
    off, on = rows
    saved = 100.0 * on[3] / max(1, on[2] + on[3])
    print(f"prefill tokens saved by reuse: {on[3]} of {on[2] + on[3]} ({saved:.0f} %); "
          f"outputs identical with and without reuse: {'yes' if off[5] == on[5] else 'NO'}")
    return {"prefill_no_reuse": off[2], "prefill_computed": on[2], "prefill_reused": on[3],
            "same_outputs": float(off[5] == on[5])}


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run both measurements; print them and return the headline figures."""
    a = parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    device, dtype = torch.device(a.device), getattr(torch, a.dtype)
    tok = tiny_tokenizer(a.vocab)
    ctx = a.prompt_tokens + a.new_tokens + 1024
    print(f"model: hidden {a.hidden}, layers {a.layers}, heads {a.heads}/{a.kv_heads or a.heads} kv, "
          f"vocab {a.vocab}; device {device}, {a.dtype}, torch threads {torch.get_num_threads()}")
    mm, injection, bare, figures = decode_speed(a, tok, device, dtype, ctx)
    if mm is not None:
        def step(input_ids, attention_mask, position_ids, cache):
            return mm(input_ids, visual=injection, attention_mask=attention_mask, position_ids=position_ids,
                      cache=cache, use_cache=True, logits_to_keep=1)
    else:
        step = hf_step(bare)
    figures.update(agent_turn(a, tok, device, ctx, no_eos(step, tok.eos_id)))
    return figures


if __name__ == "__main__":
    main()

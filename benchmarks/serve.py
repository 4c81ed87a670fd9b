"""Server throughput: requests/s and tokens/s at 1, 4 and 16 concurrent clients, batched vs one at a time.

Run:  python benchmarks/serve.py                          # tiny random preset on CPU, minutes on 2 busy cores
      python benchmarks/serve.py --device cuda --max-tokens 32 --requests 4

Starts the real server (``create_app`` under uvicorn on 127.0.0.1) twice over the same model — once
with the batching scheduler, once decoding one request at a time (``--no-batching``) — and drives
each with N concurrent ``openai`` clients, every client sending ``--requests`` chat completions
(greedy, distinct prompts, ``--max-tokens`` each). Tokens are the completion tokens the server
reports in ``usage``. Prints one table, both modes side by side, plus the batch sizes the scheduler
actually ran.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="tiny", help="model preset (default tiny)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--clients", default="1,4,16", help="concurrency levels (default 1,4,16)")
    p.add_argument("--requests", type=int, default=3, help="requests per client (default 3)")
    p.add_argument("--max-tokens", type=int, default=16, help="completion tokens per request (default 16)")
    p.add_argument("--repeats", type=int, default=2, help="runs per mode and level; the fastest is shown (default 2)")
    return p.parse_args(argv)


def run_level(base_url: str, clients: int, requests: int, max_tokens: int) -> tuple[float, int]:
    """(wall seconds, completion tokens) for ``clients`` concurrent clients."""
    import openai

    tokens: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def client(cid: int) -> None:
        c = openai.OpenAI(base_url=f"{base_url}/v1", api_key="bench", max_retries=0, timeout=600)
        for r in range(requests):
            try:
                out = c.chat.completions.create(
                    model="bench", temperature=0, max_tokens=max_tokens,
                    messages=[{"role": "user", "content": f"client {cid} request {r}: describe a {cid * 7 + r} cats"}])
            except BaseException as exc:  # noqa: BLE001 - reported after the run
                errors.append(exc)
                return
            with lock:
                tokens.append(out.usage.completion_tokens)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    if errors:
        raise RuntimeError(f"{len(errors)} request(s) failed, first: {errors[0]!r}")
    return wall, sum(tokens)


class Server:
    """The real app under uvicorn on a free 127.0.0.1 port, in a thread."""

    def __init__(self, model, batching: bool, max_clients: int):
        import socket

        import uvicorn

        from ibllm_agent.serve import ServeConfig, create_app

        self.app = create_app(model, ServeConfig(model_id="bench", memory_url="memory", batching=batching,
                                                 max_batch_size=max_clients, max_concurrent=max_clients * 2))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.02)
        self.base = f"http://127.0.0.1:{port}"

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import torch

    from ibllm_agent.model import ImageBindLLM

    torch.manual_seed(0)
    model = ImageBindLLM.from_preset(args.preset, device=args.device).eval()
    levels = [int(x) for x in args.clients.split(",")]
    print(f"model {args.preset} on {args.device}, torch threads {torch.get_num_threads()}, "
          f"{args.requests} requests/client, max_tokens {args.max_tokens}", file=sys.stderr)
    servers = {"batched": Server(model, True, max(levels)), "one-at-a-time": Server(model, False, max(levels))}
    results: dict[str, dict[int, list[tuple[float, int]]]] = {k: {n: [] for n in levels} for k in servers}
    try:
        for srv in servers.values():
            run_level(srv.base, 1, 1, args.max_tokens)  # warm-up (first-call allocations)
        # Modes alternate at every level and repeat: the box is shared, so load drifts during a run.
        for n in levels:
            for _ in range(args.repeats):
                for mode, srv in servers.items():
                    wall, tokens = run_level(srv.base, n, args.requests, args.max_tokens)
                    results[mode][n].append((wall, tokens))
                    print(f"  {mode:>13}  {n:>2} clients: {wall:.1f} s, {tokens} tokens", file=sys.stderr)
    finally:
        for srv in servers.values():
            srv.close()
    sizes_b = servers["batched"].app.state.ibllm.scheduler.stats.batch_sizes

    def best(mode: str, n: int) -> tuple[float, int]:
        return min(results[mode][n])  # the least disturbed run

    batched = {n: best("batched", n) for n in levels}
    single = {n: best("one-at-a-time", n) for n in levels}

    print(f"\nServer throughput ({args.preset}, {args.device}; {args.requests} requests per client, "
          f"{args.max_tokens} max tokens, greedy; best of {args.repeats})\n")
    print("| clients | batched req/s | batched tok/s | one-at-a-time req/s | one-at-a-time tok/s | speed-up (tok/s) |")
    print("|---|---|---|---|---|---|")
    for n in levels:
        (wb, tb), (ws, ts) = batched[n], single[n]
        reqs = n * args.requests
        print(f"| {n} | {reqs / wb:.2f} | {tb / wb:.1f} | {reqs / ws:.2f} | {ts / ws:.1f} | "
              f"{(tb / wb) / (ts / ws):.2f}x |")
    print(f"\nbatch sizes run by the batching scheduler (size: count): {dict(sorted(sizes_b.items()))}")


if __name__ == "__main__":
    main()

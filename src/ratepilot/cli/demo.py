"""`ratepilot demo`: the embedded simulator and a real-looking job, end to end, offline.

By default it runs the main job (:func:`ratepilot.cli.demo_job.run_demo`): classify generated hearing
transcripts as nomination hearings, online at the edge of the limits and then through the Batch API, with
the summaries, and ends by writing the online job's report (``ratepilot report``) and printing its path.
``--headers-tour`` instead makes a few raw SDK calls and shows the ``x-ratelimit-*`` headers going down and a 429
being produced: what the simulator looks like from the wire.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

__all__ = ["register"]


def demo(
    n: int = typer.Option(240, "--n", min=1, help="How many transcripts the job classifies."),
    rpm: int | None = typer.Option(
        None, "--rpm", min=1, help="Requests per minute of the demo's simulator (default 200; 4 with --headers-tour)."
    ),
    tpm: int | None = typer.Option(
        None,
        "--tpm",
        min=1,
        help="Tokens per minute of the demo's simulator (default 400000; 2000 with --headers-tour).",
    ),
    headers_tour: bool = typer.Option(
        False, "--headers-tour", help="Instead of the job, show raw calls, rate-limit headers and a 429."
    ),
    report_dir: Annotated[
        Path | None,
        typer.Option(
            "--report-dir",
            help="Where to write the report and keep the online job's results (default: <state dir>/demo).",
        ),
    ] = None,
) -> None:
    """Run a real-looking job end to end against the built-in simulator (offline, no key, under a minute)."""
    if headers_tour:
        _headers_tour(rpm or 4, tpm or 2_000)
        return
    from ratepilot.cli.demo_job import run_demo

    run_demo(n=n, rpm=rpm or 200, tpm=tpm or 400_000, report_dir=report_dir)


def _headers_tour(rpm: int, tpm: int) -> None:
    import openai
    from rich.console import Console
    from rich.panel import Panel
    from rich.table import Table

    from ratepilot.protocol.errors import classify
    from ratepilot.sim import SimConfig, Simulator

    console = Console()
    sim = Simulator(SimConfig(rpm=rpm, tpm=tpm, responder="classify", classify_pattern=r"(?i)refund"))
    with console.status("starting the simulator..."):
        sim.start()
    with sim:
        console.print(
            Panel.fit(
                f"simulator on [bold]{sim.base_url}[/]  RPM {rpm}, TPM {tpm}; responder: YES if the text "
                "mentions a refund, else NO",
                title="ratepilot demo",
            )
        )
        client = openai.OpenAI(base_url=sim.base_url, api_key="sk-demo-0001", max_retries=0)
        table = Table("#", "prompt", "reply", "tokens", "requests left / reset", "tokens left / reset")
        prompts = [
            "I want a refund for order 1234",
            "Great product, thanks!",
            "Refund me please",
            "Where is my parcel?",
        ]
        try:
            for i, prompt in enumerate([*prompts, "one more, over the limit"], 1):
                try:
                    raw = client.chat.completions.with_raw_response.create(
                        model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}], max_tokens=5
                    )
                except openai.RateLimitError as exc:
                    info = classify(exc.status_code, exc.response.json(), exc.response.headers)
                    console.print(table)
                    console.print(
                        Panel(
                            f"[bold red]429 {info.code}[/] ({info.error_class.value})\n{info.message}\n\n"
                            f"retry-after: {exc.response.headers.get('retry-after')}s   "
                            "x-ratelimit-remaining-requests: "
                            f"{exc.response.headers.get('x-ratelimit-remaining-requests')}",
                            title=f"request {i}: rate limited",
                        )
                    )
                    break
                out = raw.parse()
                usage = out.usage.total_tokens if out.usage else 0
                h = raw.headers
                table.add_row(
                    str(i),
                    prompt,
                    out.choices[0].message.content or "",
                    str(usage),
                    f"{h.get('x-ratelimit-remaining-requests')}/{h.get('x-ratelimit-limit-requests')} "
                    f"· {h.get('x-ratelimit-reset-requests')}",
                    f"{h.get('x-ratelimit-remaining-tokens')}/{h.get('x-ratelimit-limit-tokens')} "
                    f"· {h.get('x-ratelimit-reset-tokens')}",
                )
            else:
                console.print(table)
            emb = client.embeddings.create(model="text-embedding-3-small", input="hello", dimensions=4)
            console.print(f"embedding (4 dims, deterministic): {[round(v, 4) for v in emb.data[0].embedding]}")
        finally:
            client.close()
        stats = sim.stats()
        console.print(
            f"simulator stats: requests {stats['requests']['by_status']}, 429s {stats['rate_limited']['total']}, "
            f"billed ${sum(u['cost_usd'] for u in stats['usage'].values()):.6f}"
        )


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)

"""Fault soak: a few hundred requests across the three wire formats against the emulator, each
with a fault sequence drawn from a seeded RNG, through one shared ImageClient.

For every request the expected outcome is computed from the injected faults (which faults the
client retries, how many attempts, which Retry-After it must honour, success or which error) and
checked against what happened: the response, the events, and the emulator's request log. Across
the whole run: no request hangs, no "Unclosed client session/connector" is reported, no task is
left behind, and the process's file descriptors do not grow.

Four emulators (one per worker, each with its own fault queue) share the event loop with the
client, so requests run concurrently over one connection pool while every request's fault
sequence stays its own. Seed: IMAGEGEN_SOAK_SEED (default below); size: IMAGEGEN_SOAK_REQUESTS.
"""
from __future__ import annotations

import asyncio
import os
import random
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import aiohttp
import pytest

from _reliab_helpers import LeakWatch, Recorder, fd_count, settle_gc
from jupyter_imagegen import ImageClient, ImageConfig, ImageRequest
from jupyter_imagegen.emulator import Emulator
from jupyter_imagegen.model import sniff_mime

pytestmark = [pytest.mark.soak, pytest.mark.timeout(240)]

TOKEN = "sk-soak-SECRET-token-5d4c3b2a1f0e9d8c"
SEED = int(os.environ.get("IMAGEGEN_SOAK_SEED", "20240611"))
REQUESTS = int(os.environ.get("IMAGEGEN_SOAK_REQUESTS", "320"))
WORKERS = 4

BACKOFF_BASE = 0.01       # first backoff (doubled per attempt, jitter x0.5..1)
BACKOFF_MAX = 0.05
RETRY_AFTER_MAX = 0.2     # a server's Retry-After is honoured up to this
SLOW_TIMEOUT = 1.0        # the per-attempt timeout of a request that meets a slow fault
SLOW_DELAY = 2.5          # how long a slow fault stalls (more than SLOW_TIMEOUT)
FAST_ATTEMPT_BOUND = 3.0  # a generous bound for one non-slow attempt on a loaded 2-core box


@dataclass(frozen=True)
class Kind:
    """One injectable fault and what the client must make of it."""
    spec: str
    retried: bool
    status: Optional[int]           # status_code of the api_retry event / the final error
    error: str                      # in the final error message when this fault is the last one
    delay: Optional[Tuple[float, float]] = None   # (lo, hi) of the wait it asks for; None: backoff
    slow: bool = False


RETRYABLE = [
    Kind("429", True, 429, "HTTP 429"),
    Kind("429:retry_after=0.05", True, 429, "HTTP 429", (0.05, 0.05)),
    Kind("429:retry_after=7", True, 429, "HTTP 429", (RETRY_AFTER_MAX, RETRY_AFTER_MAX)),  # capped
    Kind("429:retry_after_date=1", True, 429, "HTTP 429", (0.0, RETRY_AFTER_MAX)),          # HTTP date
    Kind("429:retry_after_ms=30", True, 429, "HTTP 429", (0.03, 0.03)),
    Kind("500", True, 500, "HTTP 500"),
    Kind("502", True, 502, "HTTP 502"),
    Kind("503", True, 503, "HTTP 503"),
    Kind("503:retry_after=0", True, 503, "HTTP 503", (0.0, 0.0)),
    Kind("html", True, 502, "HTML page"),
    Kind("html:status=503,retry_after=0.05", True, 503, "HTML page", (0.05, 0.05)),
    Kind("reset", True, None, "connection was reset"),
    Kind("reset_after_headers", True, None, "connection broke while reading"),
    Kind("truncate", True, 200, "invalid JSON"),
    Kind("invalid_json", True, 200, "invalid JSON"),
    Kind(f"slow_body:delay={SLOW_DELAY}", True, None, "timed out after", slow=True),
    Kind(f"slow_headers:delay={SLOW_DELAY}", True, None, "timed out after", slow=True),
]
TERMINAL = [
    Kind("no_image", False, 200, "no image"),
    Kind("400", False, 400, "HTTP 400"),
    Kind("401", False, 401, "HTTP 401"),
    Kind("404", False, 404, "HTTP 404"),
]
SUCCESS = [Kind("ok", False, None, ""), Kind("url", False, None, "")]
BY_SPEC = {k.spec: k for k in RETRYABLE + TERMINAL + SUCCESS}


@dataclass
class Plan:
    number: int
    api_type: str
    request: ImageRequest
    queue: List[str]              # the faults queued for this request: exactly one per attempt
    max_attempts: int
    n_images: int

    @property
    def kinds(self) -> List[Kind]:
        return [BY_SPEC[s] for s in self.queue]

    @property
    def attempts(self) -> int:
        return len(self.queue)

    @property
    def success(self) -> bool:
        return self.kinds[-1].spec in ("ok", "url")

    @property
    def gave_up(self) -> bool:
        return self.kinds[-1].retried

    def max_wait(self, attempt: int, kind: Kind) -> float:
        if kind.delay is not None:
            return kind.delay[1]
        return min(BACKOFF_MAX, BACKOFF_BASE * 2 ** (attempt - 1))

    @property
    def deadline(self) -> float:
        """The latest this request may end: its attempts (slow ones bounded by the timeout) and waits."""
        t = 0.0
        for a, k in enumerate(self.kinds, start=1):
            t += (SLOW_TIMEOUT + 0.5) if k.slow else FAST_ATTEMPT_BOUND
            if a < self.attempts:
                t += self.max_wait(a, k)
        return t

    def describe(self) -> str:
        return f"#{self.number} {self.api_type} max_attempts={self.max_attempts} faults={self.queue}"


def make_plan(rng: random.Random, number: int, base_urls: Dict[str, str]) -> Plan:
    api_type = rng.choice(["openrouter_chat", "openai_images", "openai_responses"])
    max_attempts = rng.choices([1, 2, 3, 4], weights=[1, 2, 5, 2])[0]
    # how many transient faults in a row: 0 .. max_attempts (max_attempts = the client gives up)
    k = rng.choices(range(max_attempts + 1), weights=[4] + [3] * (max_attempts - 1) + [2])[0]
    queue = [rng.choice(RETRYABLE).spec for _ in range(k)]
    if k < max_attempts:
        queue.append(rng.choice(TERMINAL).spec if rng.random() < 0.25 else rng.choice(SUCCESS).spec)
    kw: Dict[str, Any] = {}
    n = 1
    if api_type == "openai_images":
        if rng.random() < 0.5:
            kw.update(model="dall-e-2", size="256x256")
        else:
            kw.update(model="gpt-image-1", quality="low", output_format=rng.choice(["png", "jpeg", "webp"]))
        n = rng.choice([1, 1, 2])
    elif api_type == "openrouter_chat":
        kw.update(aspect_ratio=rng.choice(["1:1", "3:2", "9:16"]))
    slow = any(BY_SPEC[s].slow for s in queue)
    req = ImageRequest(f"soak {number}: a lighthouse, variant {rng.randrange(10**6)}", api_type=api_type,
                       base_url=base_urls[api_type], n=n, max_attempts=max_attempts,
                       timeout=SLOW_TIMEOUT if slow else 30.0, **kw)
    return Plan(number, api_type, req, queue, max_attempts, n)


@dataclass
class Outcome:
    plan: Plan
    resp: Any = None
    events: List[Any] = field(default_factory=list)
    elapsed: float = 0.0
    logged: List[Dict[str, Any]] = field(default_factory=list)
    pending: List[str] = field(default_factory=list)
    hung: bool = False


async def run_worker(emu: Emulator, client: ImageClient, plans: List[Plan], out: List[Outcome]) -> None:
    for plan in plans:
        emu.add_faults(*plan.queue)
        before = emu.request_count
        rec = Recorder()
        o = Outcome(plan)
        t0 = time.monotonic()
        try:
            o.resp = await asyncio.wait_for(client.generate(plan.request, on_event=rec), plan.deadline + 5)
        except asyncio.TimeoutError:
            o.hung = True
        o.elapsed = time.monotonic() - t0
        o.events = rec.events
        o.logged = emu.requests[before:]
        o.pending = emu.pending_faults
        emu.clear_faults()
        out.append(o)


def check(o: Outcome) -> List[str]:
    """Everything that is wrong with one request's outcome (empty: as expected)."""
    p, r, bad = o.plan, o.resp, []
    if o.hung:
        return [f"hung: no answer within {p.deadline + 5:.1f} s"]
    if o.elapsed > p.deadline:
        bad.append(f"took {o.elapsed:.2f} s, over its deadline of {p.deadline:.2f} s")
    # attempts: the client made exactly one attempt per injected fault, and no more
    if r.attempts != p.attempts:
        bad.append(f"attempts {r.attempts} != {p.attempts}")
    if o.pending:
        bad.append(f"faults left unconsumed: {o.pending}")
    logged = [e.get("fault") for e in o.logged]
    if logged != p.queue:
        bad.append(f"the emulator saw {logged}, expected {p.queue}")
    calls = [e for e in o.events if e.type == "api_call"]
    retries = [e for e in o.events if e.type == "api_retry"]
    if [e["attempt"] for e in calls] != list(range(1, p.attempts + 1)):
        bad.append(f"api_call attempts {[e['attempt'] for e in calls]}")
    if [e["attempt"] for e in retries] != list(range(1, p.attempts)):
        bad.append(f"api_retry attempts {[e['attempt'] for e in retries]}")
    want_status = [k.status for k in p.kinds[:-1]]
    if [e["status_code"] for e in retries] != want_status:
        bad.append(f"api_retry status codes {[e['status_code'] for e in retries]} != {want_status}")
    for a, (e, k) in enumerate(zip(retries, p.kinds), start=1):
        d = e["delay"]
        if k.delay is not None:
            lo, hi = k.delay
        else:
            hi = p.max_wait(a, k)
            lo = hi / 2
        if not lo - 1e-9 <= d <= hi + 1e-9:
            bad.append(f"retry {a} after {k.spec}: delay {d:.4f} not in [{lo}, {hi}]")
    # events: one story per request, all tagged with its id, start first and one end last
    types = [e.type for e in o.events]
    if not types or types[0] != "generation_started":
        bad.append(f"events do not start with generation_started: {types[:3]}")
    ends = [t for t in types if t in ("generation_completed", "generation_failed")]
    if len(ends) != 1 or types[-1] != ends[0]:
        bad.append(f"not exactly one final event, last: {types[-3:]}")
    if {e.request_id for e in o.events} != {p.request.request_id} or r.request_id != p.request.request_id:
        bad.append("an event or the response carries another request_id")
    if any(TOKEN in repr(e.to_dict()) for e in o.events):
        bad.append("the token is in an event")
    # the outcome
    if r.success != p.success:
        bad.append(f"success={r.success}, expected {p.success} (error: {r.error})")
    if p.success:
        if len(r.artifacts) != p.n_images or r.errors:
            bad.append(f"{len(r.artifacts)} images (expected {p.n_images}), errors {r.errors}")
        for a in r.artifacts:
            if sniff_mime(a.data) is None or not a.verify() or not a.width:
                bad.append(f"artifact {a.index} is not a valid image")
        if types[-1] != "generation_completed":
            bad.append("a success did not end with generation_completed")
    else:
        last = p.kinds[-1]
        err = r.error or ""
        if not err or "\n" in err:
            bad.append(f"the error is not one line: {err!r}")
        if last.error not in err:
            bad.append(f"error {err!r} does not say {last.error!r}")
        gave_up = f"gave up after {p.attempts} attempts"
        if (p.gave_up and p.attempts > 1) != (gave_up in err):
            bad.append(f"error {err!r}: 'gave up' should {'' if p.gave_up else 'not '}be there")
        if TOKEN in err or any(TOKEN in s for s in r.suggestions):
            bad.append("the token is in the error")
        if r.artifacts:
            bad.append("a failure carries images")
        if types[-1] != "generation_failed":
            bad.append("a failure did not end with generation_failed")
    return bad


async def test_fault_soak(request):
    loop = asyncio.get_running_loop()
    rng = random.Random(SEED)
    settle_gc()
    fds_before = fd_count()
    t_start = time.monotonic()
    outcomes: List[Outcome] = []
    with LeakWatch(loop) as watch:
        emus = [Emulator(token=TOKEN) for _ in range(WORKERS)]
        for e in emus:
            await e.start()
        cfg = ImageConfig(api_type="openai_images", token=TOKEN, backoff_base=BACKOFF_BASE,
                          backoff_max=BACKOFF_MAX, retry_after_max=RETRY_AFTER_MAX, timeout=30)
        client = ImageClient(cfg)
        plans: List[List[Plan]] = [[] for _ in emus]
        for i in range(REQUESTS):
            w = i % WORKERS
            base_urls = {api: emus[w].base_url_for(api) for api in
                         ("openrouter_chat", "openai_images", "openai_responses")}
            plans[w].append(make_plan(rng, i, base_urls))
        fds_peak = 0

        async def sample_fds():
            nonlocal fds_peak
            while True:
                fds_peak = max(fds_peak, fd_count())
                await asyncio.sleep(0.25)
        sampler = loop.create_task(sample_fds())
        try:
            await asyncio.gather(*(run_worker(e, client, ps, outcomes) for e, ps in zip(emus, plans)))
        finally:
            sampler.cancel()
            await asyncio.gather(sampler, return_exceptions=True)
        elapsed = time.monotonic() - t_start
        # no client coroutine is still running once every generate() has returned
        leftover = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()
                    and "jupyter_imagegen" in repr(t.get_coro()) and "emulator" not in repr(t.get_coro())]
        connector = client._session.connector if client._session else None
        await client.close()
        for e in emus:
            await e.stop()
        # the emulators' handlers of slow faults whose client gave up keep sleeping after stop()
        # (aiohttp does not cancel them): let them drain, then nothing at all may be left
        deadline = time.monotonic() + SLOW_DELAY + 2
        while time.monotonic() < deadline and [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]:
            await asyncio.sleep(0.05)
        del client, connector
        settle_gc()
    tasks_after = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    settle_gc()
    fds_after = fd_count()

    problems = []
    for o in sorted(outcomes, key=lambda o: o.plan.number):
        for b in check(o):
            problems.append(f"{o.plan.describe()}: {b}")
    total_attempts = sum(o.plan.attempts for o in outcomes)
    stats = {
        "seed": SEED, "requests": len(outcomes), "attempts": total_attempts,
        "successes": sum(1 for o in outcomes if o.resp is not None and o.resp.success),
        "gave_up": sum(1 for o in outcomes if o.plan.gave_up),
        "terminal_errors": sum(1 for o in outcomes if not o.plan.success and not o.plan.gave_up),
        "duration_s": round(elapsed, 1),
        "max_elapsed_s": round(max(o.elapsed for o in outcomes), 2),
        "fds_before": fds_before, "fds_peak": fds_peak, "fds_after": fds_after,
    }
    print("soak:", stats)
    request.node.user_properties.append(("soak", stats))
    assert len(outcomes) == REQUESTS
    assert not problems, f"{len(problems)} problem(s) (seed {SEED}):\n" + "\n".join(problems[:25])
    assert not leftover, f"client tasks still pending after the run: {leftover}"
    assert not tasks_after, f"tasks left pending: {tasks_after}"
    assert not watch.unclosed(), watch.unclosed()
    assert fds_after <= fds_before + 3, f"file descriptors grew: {fds_before} -> {fds_after}"
    # the mix really covered every fault, every format, and every kind of ending
    seen = {s for o in outcomes for s in o.plan.queue}
    assert seen == set(BY_SPEC), f"never injected: {set(BY_SPEC) - seen}"
    assert {o.plan.api_type for o in outcomes} == {"openrouter_chat", "openai_images", "openai_responses"}
    assert stats["successes"] and stats["gave_up"] and stats["terminal_errors"]


async def test_leak_watch_detects_an_unclosed_session():
    """The detector the soak relies on does see an unclosed aiohttp session (else the soak's
    'no Unclosed warnings' would prove nothing)."""
    loop = asyncio.get_running_loop()
    with LeakWatch(loop) as watch:
        s = aiohttp.ClientSession()
        del s
    assert any("Unclosed client session" in m for m in watch.unclosed()), watch.messages()

"""`voxgrid cost`: turn measured capacity into money, and compare it with a per-minute cloud price.

Inputs (one YAML file, deploy/cost-example.yaml documents every field): per service, the concurrent
sessions one replica holds at the SLO (read from a `voxgrid loadtest --search` report.json, or given),
the GPU kind and GPUs per replica; a price per GPU-hour per kind; the traffic shape (calls per day,
average call minutes, peak-to-average ratio); and the cloud price per minute to beat. Optional per-session
usage records (JSON lines with `duration_s`) replace the assumed average call length by the measured one.

The model provisions every service for the peak all day (no autoscaling): replicas = ceil(peak concurrent
sessions / (sessions per replica x max utilisation)), at least `min_replicas`. Cost per minute is the
daily GPU bill over the daily conversation minutes. Every bad input raises CostInputError naming the field.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# report.json written by this version of `voxgrid loadtest` (loadtest/report.py REPORT_FORMAT).
SUPPORTED_REPORT_FORMAT = 1
MINUTES_PER_DAY = 24 * 60


class CostInputError(ValueError):
    """A cost input is missing or nonsense; the message names the field and says what to put there."""


@dataclass(frozen=True)
class ServiceCapacity:
    name: str
    gpu: str
    sessions_per_replica: float
    gpus_per_replica: float = 1.0
    min_replicas: int = 1
    source: str = "given"  # where sessions_per_replica came from (a report path, or "given")


@dataclass(frozen=True)
class Traffic:
    calls_per_day: float
    avg_call_minutes: float
    peak_to_average: float

    @property
    def minutes_per_day(self) -> float:
        return self.calls_per_day * self.avg_call_minutes

    @property
    def peak_concurrent(self) -> float:
        return self.minutes_per_day / MINUTES_PER_DAY * self.peak_to_average


@dataclass(frozen=True)
class CostInputs:
    services: tuple[ServiceCapacity, ...]
    gpu_price_per_hour: Mapping[str, float]
    traffic: Traffic
    cloud_price_per_minute: float
    max_utilisation: float = 1.0
    currency: str = "USD"
    notes: tuple[str, ...] = ()


@dataclass
class ServiceCost:
    name: str
    gpu: str
    sessions_per_replica: float
    replicas: int
    gpus: float
    cost_per_day: float
    peak_utilisation: float  # peak sessions / provisioned sessions
    average_utilisation: float


@dataclass
class CostResult:
    inputs: CostInputs
    services: list[ServiceCost] = field(default_factory=list)
    cost_per_day: float = 0.0
    cost_per_minute: float = 0.0
    cost_per_call: float = 0.0
    asymptotic_cost_per_minute: float = 0.0  # at very large volume (no rounding up of replicas)
    break_even_calls_per_day: float | None = None  # None: never cheaper than the cloud price

    def to_dict(self) -> dict[str, Any]:
        t = self.inputs.traffic
        return {
            "currency": self.inputs.currency, "calls_per_day": t.calls_per_day,
            "avg_call_minutes": t.avg_call_minutes, "peak_to_average": t.peak_to_average,
            "peak_concurrent_sessions": t.peak_concurrent, "cost_per_day": self.cost_per_day,
            "cost_per_minute": self.cost_per_minute, "cost_per_call": self.cost_per_call,
            "cloud_price_per_minute": self.inputs.cloud_price_per_minute,
            "asymptotic_cost_per_minute": self.asymptotic_cost_per_minute,
            "break_even_calls_per_day": self.break_even_calls_per_day,
            "services": [vars(s) for s in self.services], "notes": list(self.inputs.notes),
        }


# --- inputs ------------------------------------------------------------------------------------------------

def _number(data: Mapping[str, Any], key: str, where: str, *, positive: bool = True, default: float | None = None,
            minimum: float | None = None) -> float:
    value = data.get(key, default)
    if value is None:
        raise CostInputError(f"{where}{key} is missing: set it (see deploy/cost-example.yaml)")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise CostInputError(f"{where}{key} is {value!r}: it must be a number")
    if positive and value <= 0:
        raise CostInputError(f"{where}{key} is {value}: it must be greater than 0")
    if minimum is not None and value < minimum:
        raise CostInputError(f"{where}{key} is {value}: it must be at least {minimum}")
    return float(value)


def capacity_from_report(path: Path, where: str) -> tuple[float, str]:
    """Sessions per replica at the SLO from a `voxgrid loadtest --search` report.json, and its mode."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise CostInputError(f"{where}report: {path} does not exist") from exc
    except json.JSONDecodeError as exc:
        raise CostInputError(f"{where}report: {path} is not JSON ({exc})") from exc
    if not isinstance(data, dict) or "mode" not in data or "summary" not in data:
        raise CostInputError(f"{where}report: {path} is not a voxgrid load-test report.json (no mode/summary)")
    fmt = data.get("report_format", SUPPORTED_REPORT_FORMAT)
    if fmt != SUPPORTED_REPORT_FORMAT:
        raise CostInputError(f"{where}report: {path} has report_format {fmt!r}; this voxgrid reads "
                             f"{SUPPORTED_REPORT_FORMAT}: re-run the load test with this version")
    cap = data.get("capacity")
    if not isinstance(cap, dict) or not isinstance(cap.get("capacity"), (int, float)):
        raise CostInputError(f"{where}report: {path} has no capacity.capacity: run `voxgrid loadtest --search` "
                             f"or give {where}sessions_per_replica instead")
    if cap["capacity"] <= 0:
        raise CostInputError(f"{where}report: {path} has capacity.capacity {cap['capacity']}: not even one session "
                             f"met the SLO ({cap.get('slo_ms')} ms); nothing to price")
    return float(cap["capacity"]), str(data["mode"])


def average_call_minutes(path: Path) -> tuple[float, int]:
    """Mean session length from usage records: JSON lines (or one JSON list) of objects with `duration_s`."""
    if not path.exists():
        raise CostInputError(f"usage: {path} does not exist")
    text = path.read_text().strip()
    try:
        records = json.loads(text) if text.startswith("[") else [json.loads(x) for x in text.splitlines() if x.strip()]
    except json.JSONDecodeError as exc:
        raise CostInputError(f"usage: {path} is not JSON lines ({exc})") from exc
    durations = []
    for i, r in enumerate(records):
        d = r.get("duration_s") if isinstance(r, dict) else None
        if not isinstance(d, (int, float)) or d < 0:
            raise CostInputError(f"usage: record {i} of {path} has no valid duration_s (seconds, >= 0)")
        durations.append(float(d))
    if not durations or sum(durations) <= 0:
        raise CostInputError(f"usage: {path} has no sessions with a duration")
    return sum(durations) / len(durations) / 60.0, len(durations)


def parse_inputs(data: Any, base_dir: Path = Path(".")) -> CostInputs:
    """Validate the YAML's contents; report paths are relative to the YAML file's folder."""
    if not isinstance(data, dict):
        raise CostInputError("the cost file must be a YAML mapping with gpu_price_per_hour, services, traffic, "
                             "cloud_price_per_minute")
    notes: list[str] = []
    prices_raw = data.get("gpu_price_per_hour")
    if not isinstance(prices_raw, dict) or not prices_raw:
        raise CostInputError("gpu_price_per_hour is missing: map each GPU kind to its price per hour")
    prices = {str(k): _number(prices_raw, k, "gpu_price_per_hour.", positive=False, minimum=0) for k in prices_raw}
    traffic_raw = data.get("traffic")
    if not isinstance(traffic_raw, dict):
        raise CostInputError("traffic is missing: set calls_per_day, avg_call_minutes and peak_to_average")
    avg_minutes = traffic_raw.get("avg_call_minutes")
    if data.get("usage"):
        avg, n = average_call_minutes(base_dir / str(data["usage"]))
        notes.append(f"average call length {avg:.2f} min measured from {n} usage records ({data['usage']})")
        avg_minutes = avg
    traffic = Traffic(
        calls_per_day=_number(traffic_raw, "calls_per_day", "traffic."),
        avg_call_minutes=_number({"avg_call_minutes": avg_minutes}, "avg_call_minutes", "traffic."),
        peak_to_average=_number(traffic_raw, "peak_to_average", "traffic.", minimum=1),
    )
    services_raw = data.get("services")
    if not isinstance(services_raw, dict) or not services_raw:
        raise CostInputError("services is missing: list each service with gpu and a report or sessions_per_replica")
    services = []
    for name, s in services_raw.items():
        where = f"services.{name}."
        if not isinstance(s, dict):
            raise CostInputError(f"services.{name} must be a mapping (gpu, report or sessions_per_replica)")
        gpu = s.get("gpu")
        if not gpu:
            raise CostInputError(f"{where}gpu is missing: name a kind listed in gpu_price_per_hour")
        if str(gpu) not in prices:
            raise CostInputError(f"{where}gpu {gpu!r} has no price: add it to gpu_price_per_hour "
                                 f"(known: {', '.join(prices)})")
        if s.get("report"):
            path = base_dir / str(s["report"])
            per_replica, mode = capacity_from_report(path, where)
            source = f"{s['report']} ({mode} mode)"
            if "sessions_per_replica" in s:
                notes.append(f"{where}sessions_per_replica ignored: the report's capacity is used")
        else:
            per_replica = _number(s, "sessions_per_replica", where)
            source = "given"
        services.append(ServiceCapacity(
            str(name), str(gpu), per_replica, _number(s, "gpus_per_replica", where, default=1),
            int(_number(s, "min_replicas", where, positive=False, minimum=0, default=1)), source))
    cloud = _number(data, "cloud_price_per_minute", "", positive=False, minimum=0)
    util = _number(data, "max_utilisation", "", default=1.0)
    if util > 1:
        raise CostInputError(f"max_utilisation is {util}: it is a share of capacity, at most 1")
    return CostInputs(tuple(services), prices, traffic, cloud, util, str(data.get("currency", "USD")), tuple(notes))


def load_inputs(path: str | Path) -> CostInputs:
    import yaml

    p = Path(path)
    if not p.exists():
        raise CostInputError(f"cost file {p} does not exist (start from deploy/cost-example.yaml)")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise CostInputError(f"cost file {p} is not valid YAML: {exc}") from exc
    return parse_inputs(data, p.parent)


# --- the model ---------------------------------------------------------------------------------------------

def replicas_for(peak: float, svc: ServiceCapacity, max_utilisation: float) -> int:
    # Round before ceil so 10 sessions on replicas of 5 at 100 % is 2 replicas, not 3 from float noise.
    need = math.ceil(round(peak / (svc.sessions_per_replica * max_utilisation), 9)) if peak > 0 else 0
    return max(svc.min_replicas, need)


def daily_cost(inputs: CostInputs, traffic: Traffic) -> float:
    return sum(replicas_for(traffic.peak_concurrent, s, inputs.max_utilisation) * s.gpus_per_replica
               * inputs.gpu_price_per_hour[s.gpu] * 24 for s in inputs.services)


def cost_per_minute_at(inputs: CostInputs, calls_per_day: float) -> float:
    t = Traffic(calls_per_day, inputs.traffic.avg_call_minutes, inputs.traffic.peak_to_average)
    return daily_cost(inputs, t) / t.minutes_per_day


def asymptotic_cost_per_minute(inputs: CostInputs) -> float:
    """Cost per minute when replicas need no rounding up: GPU cost of one session-minute at peak sizing."""
    t = inputs.traffic
    per_session_hour = sum(s.gpus_per_replica * inputs.gpu_price_per_hour[s.gpu]
                           / (s.sessions_per_replica * inputs.max_utilisation) for s in inputs.services)
    return per_session_hour * t.peak_to_average / 60.0


def break_even_calls_per_day(inputs: CostInputs, limit: float = 1e9) -> float | None:
    """Smallest daily call volume at which self-hosting costs no more per minute than the cloud price.

    The cost per minute falls between replica steps and jumps up at each step, so walk the steps: within
    one step the daily bill D is fixed and the condition D / (calls x minutes) <= price is a lower bound.
    """
    t = inputs.traffic
    cloud = inputs.cloud_price_per_minute
    if cloud <= 0 or asymptotic_cost_per_minute(inputs) > cloud:
        return None
    # calls/day at which a service needs one more replica: peak = n x per_replica x util.
    calls_per_session = MINUTES_PER_DAY / (t.avg_call_minutes * t.peak_to_average)
    lo = 0.0
    for _ in range(1_000_000):
        traffic = Traffic(max(lo, 1e-9), t.avg_call_minutes, t.peak_to_average)
        d = daily_cost(inputs, traffic)
        steps = [(replicas_for(traffic.peak_concurrent, s, inputs.max_utilisation)) * s.sessions_per_replica
                 * inputs.max_utilisation * calls_per_session for s in inputs.services]
        hi = min(steps)  # next volume at which some service adds a replica
        need = d / (t.avg_call_minutes * cloud)
        if max(need, lo) <= hi:
            return max(need, lo)
        if hi >= limit:
            return None
        lo = hi * (1 + 1e-12)
    return None


def compute(inputs: CostInputs) -> CostResult:
    t = inputs.traffic
    out = CostResult(inputs)
    avg_concurrent = t.minutes_per_day / MINUTES_PER_DAY
    for s in inputs.services:
        n = replicas_for(t.peak_concurrent, s, inputs.max_utilisation)
        provisioned = n * s.sessions_per_replica
        cost = n * s.gpus_per_replica * inputs.gpu_price_per_hour[s.gpu] * 24
        out.services.append(ServiceCost(
            s.name, s.gpu, s.sessions_per_replica, n, n * s.gpus_per_replica, cost,
            t.peak_concurrent / provisioned if provisioned else 0.0,
            avg_concurrent / provisioned if provisioned else 0.0))
    out.cost_per_day = sum(s.cost_per_day for s in out.services)
    out.cost_per_minute = out.cost_per_day / t.minutes_per_day
    out.cost_per_call = out.cost_per_minute * t.avg_call_minutes
    out.asymptotic_cost_per_minute = asymptotic_cost_per_minute(inputs)
    out.break_even_calls_per_day = break_even_calls_per_day(inputs)
    return out


# --- output ------------------------------------------------------------------------------------------------

def volumes(inputs: CostInputs, n: int = 60) -> list[float]:
    """Log-spaced daily call volumes around the configured one (1/100x to 100x)."""
    c = inputs.traffic.calls_per_day
    return [c * 10 ** (-2 + 4 * i / (n - 1)) for i in range(n)]


def markdown(result: CostResult) -> str:
    from voxgrid.tables import table

    i, t, cur = result.inputs, result.inputs.traffic, result.inputs.currency
    rows = [[s.name, s.gpu, f"{s.sessions_per_replica:g}", s.replicas, f"{s.gpus:g}", f"{s.cost_per_day:.2f}",
             f"{100 * s.peak_utilisation:.0f} %", f"{100 * s.average_utilisation:.0f} %"] for s in result.services]
    be = result.break_even_calls_per_day
    lines = [
        f"Traffic: {t.calls_per_day:g} calls/day x {t.avg_call_minutes:g} min = {t.minutes_per_day:g} min/day; "
        f"peak {t.peak_to_average:g}x average = {t.peak_concurrent:.1f} concurrent sessions",
        "",
        table(["service", "GPU", "sessions/replica", "replicas at peak", "GPUs", f"{cur}/day", "peak util",
               "avg util"], rows),
        "",
        f"- cost per conversation minute: {result.cost_per_minute:.4f} {cur} "
        f"(cloud: {i.cloud_price_per_minute:.4f} {cur}/min)",
        f"- cost per call ({t.avg_call_minutes:g} min): {result.cost_per_call:.4f} {cur}",
        f"- GPU bill: {result.cost_per_day:.2f} {cur}/day, provisioned for the peak all day",
        f"- at very large volume: {result.asymptotic_cost_per_minute:.4f} {cur}/min",
        "- break-even versus the cloud price: " + (
            f"{be:,.0f} calls/day ({be * t.avg_call_minutes:,.0f} min/day)" if be is not None
            else "never (even at full scale the GPUs cost more per minute than the cloud price)"),
        *(f"- note: {n}" for n in i.notes),
    ]
    return "\n".join(lines)


def text_plot(inputs: CostInputs, width: int = 60, height: int = 14) -> str:
    """Cost per minute (log) against daily calls (log) as characters: '*' self-hosted, '-' the cloud price."""
    xs = volumes(inputs, width)
    ys = [cost_per_minute_at(inputs, x) for x in xs]
    cloud = inputs.cloud_price_per_minute
    lo = math.log10(min([*ys, cloud] if cloud > 0 else ys))
    hi = math.log10(max([*ys, cloud] if cloud > 0 else ys))
    span = max(hi - lo, 1e-9)

    def row(v: float) -> int:
        return height - 1 - round((math.log10(v) - lo) / span * (height - 1))

    grid = [[" "] * width for _ in range(height)]
    if cloud > 0:
        grid[row(cloud)] = ["-"] * width
    for j, y in enumerate(ys):
        grid[row(y)][j] = "*"
    label = [f"{10 ** (hi - k * span / (height - 1)):>9.4f} |" for k in range(height)]
    lines = [f"{label[k]}{''.join(grid[k])}" for k in range(height)]
    lines.append(" " * 10 + "+" + "-" * width)
    lines.append(" " * 11 + f"{xs[0]:<.0f} calls/day (log scale) {xs[-1]:>.0f}")
    return f"cost per minute ({inputs.currency}, log) vs daily calls; * self-hosted, - cloud price\n" + "\n".join(lines)


def plot(inputs: CostInputs, path: Path) -> bool:
    """PNG of cost per minute against daily volume; False when matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = volumes(inputs, 400)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(xs, [cost_per_minute_at(inputs, x) for x in xs], label="self-hosted (provisioned for peak)")
    if inputs.cloud_price_per_minute > 0:
        ax.axhline(inputs.cloud_price_per_minute, color="red", linestyle="--", label="cloud price")
    ax.axvline(inputs.traffic.calls_per_day, color="grey", linestyle=":", label="configured volume")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("calls per day")
    ax.set_ylabel(f"{inputs.currency} per conversation minute")
    ax.set_title(f"Cost per minute vs daily volume ({inputs.traffic.avg_call_minutes:g} min calls, "
                 f"peak {inputs.traffic.peak_to_average:g}x)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def cost_command(args: argparse.Namespace) -> int:
    import sys

    try:
        inputs = load_inputs(args.config)
        if args.report:  # quick what-if: one report for one service, overriding the file's entry
            name, _, report = args.report.rpartition("=")
            name = name or inputs.services[0].name
            match = [s for s in inputs.services if s.name == name]
            if not match:
                raise CostInputError(f"--report {args.report}: no service {name!r} in {args.config}")
            per, mode = capacity_from_report(Path(report), f"--report {name}=")
            measured = dataclasses.replace(match[0], sessions_per_replica=per, source=f"{report} ({mode} mode)")
            inputs = dataclasses.replace(inputs, services=tuple(measured if s.name == name else s
                                                                for s in inputs.services))
    except CostInputError as exc:
        print(f"voxgrid cost: {exc}", file=sys.stderr)
        return 2
    result = compute(inputs)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    print(markdown(result))
    print()
    if args.plot and plot(inputs, Path(args.plot)):
        print(f"plot: {args.plot}")
    else:
        print(text_plot(inputs))
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cost", help="cost per conversation minute from load-test capacity and GPU prices",
                       description=(__doc__ or "").strip(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="YAML with prices, traffic and services (see deploy/cost-example.yaml)")
    p.add_argument("--report", default="",
                   help="SERVICE=report.json: use this load-test report's capacity for SERVICE")
    p.add_argument("--plot", default="", help="write cost per minute vs daily volume as a PNG here "
                   "(text plot when empty or matplotlib is missing)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cost_command)

"""fleetcheck in Python: the anchor of fleetcheck's headline benchmark.

The same scan as `fleetcheck scan` on its pool, written the way a good
Python engineer would write it today: an aiomultiprocess pool of worker
processes (uvloop event loops), aiohttp keep-alive sessions, a hand-written
line parser of the Prometheus text format, the rules of a fleetcheck rules
file with the same semantics (threshold with ratio_to, rate with counter
resets, zscore, stale, absent, fleet_outlier), host state sharded per worker
(a host is always scraped by the same worker, routed by a custom
aiomultiprocess scheduler) and each round's partial report folded in the
worker, so only counts, findings and the fleet-level values cross the pipe.

    python fleetcheck_py.py --fleet http://127.0.0.1:PORT --hosts 1000 \
        --rounds 5 --rules rules.toml --round-query --clock logical

prints one JSON object: points, wall and CPU seconds, and the anomalies found
as a sorted list of [host, round, check, series] (what fleetcheck's
verification compares). Requirements: requirements.txt beside this file.

Like fleetcheck, the state kept per host is only what the rules read: the
series some rule watches (and, for a ratio, the denominator's value on the
same page); every other sample line is parsed (its value must be a number)
and counted, then dropped.
"""

import argparse
import asyncio
import json
import math
import os
import re
import resource
import sys
import time
from collections import deque

MISSING = []
try:
    import aiohttp
except ImportError:
    MISSING.append("aiohttp")
try:
    import aiomultiprocess as amp
    from aiomultiprocess.scheduler import Scheduler
except ImportError:
    MISSING.append("aiomultiprocess")
    Scheduler = object
try:
    import uvloop
except ImportError:
    MISSING.append("uvloop")

ACCEPT = (
    "application/openmetrics-text;version=1.0.0;q=0.5,"
    "text/plain;version=0.0.4;q=0.4,*/*;q=0.1"
)

# The rules fleetcheck runs when given none (`fleetcheck --print-rules`).
BUILTIN_RULES = [
    {"name": "disk_almost_full", "kind": "threshold",
     "metric": "node_filesystem_avail_bytes",
     "ratio_to": "node_filesystem_size_bytes", "below": 0.05},
    {"name": "overheating", "kind": "threshold",
     "metric": "node_hwmon_temp_celsius", "above": 90.0},
    {"name": "nic_errors", "kind": "rate",
     "metric": "node_network_receive_errs_total", "above": 5.0},
    {"name": "dirty_spike", "kind": "zscore", "metric": "node_memory_Dirty_bytes",
     "threshold": 6.0, "window": 30, "min_samples": 3, "min_stddev": 1e6},
    {"name": "unit_vanished", "kind": "stale", "metric": "node_systemd_unit_state"},
    {"name": "exporter_missing", "kind": "absent", "metric": "node_exporter_build_info"},
    {"name": "load_outlier", "kind": "fleet_outlier", "metric": "node_load15",
     "threshold": 8.0, "min_hosts": 5, "min_mad": 0.1},
]

ZERO_SPREAD = 1e-9
DEFAULT_MIN_RATIO = 0.01


# --------------------------------------------------------------------------
# Rules


class Rule:
    """One rule with fleetcheck's defaults filled in."""

    __slots__ = ("idx", "name", "kind", "metric", "labels", "above", "below",
                 "ratio_to", "threshold", "window", "min_samples", "min_stddev",
                 "min_stddev_ratio", "min_hosts", "min_mad", "min_mad_ratio")

    def __init__(self, idx, r):
        self.idx = idx
        self.name = r["name"]
        self.kind = r["kind"]
        m = r.get("metric")
        self.metric = m.encode() if m else None
        self.labels = dict(r.get("labels") or {})
        self.above = r.get("above", r.get("fire_above"))
        self.below = r.get("below", r.get("fire_below"))
        rt = r.get("ratio_to")
        self.ratio_to = rt.encode() if rt else None
        fleet = self.kind == "fleet_outlier"
        self.threshold = float(r.get("threshold", 5.0 if fleet else 4.0))
        self.window = int(r.get("window", 30))
        self.min_samples = max(1, int(r.get("min_samples", 5)))
        self.min_stddev = float(r.get("min_stddev", 0.0))
        self.min_stddev_ratio = float(r.get("min_stddev_ratio", DEFAULT_MIN_RATIO))
        self.min_hosts = int(r.get("min_hosts", 5))
        self.min_mad = float(r.get("min_mad", 0.0))
        self.min_mad_ratio = float(r.get("min_mad_ratio", DEFAULT_MIN_RATIO))

    def matches(self, name, labels):
        if self.metric is not None and self.metric != name:
            return False
        return all(labels.get(k) == v for k, v in self.labels.items())


def load_rules(path):
    if path is None:
        return [Rule(i, r) for i, r in enumerate(BUILTIN_RULES)]
    import tomllib  # Python 3.11+

    with open(path, "rb") as f:
        doc = tomllib.load(f)
    return [Rule(i, r) for i, r in enumerate(doc.get("rule", []))]


# --------------------------------------------------------------------------
# Parsing


class Malformed(Exception):
    pass


def parse_labels(text):
    """`k="v",...` (the inside of the braces) -> dict; escapes kept as written."""
    out = {}
    i, n = 0, len(text)
    while i < n:
        eq = text.index("=", i)
        k = text[i:eq].strip()
        if text[eq + 1] != '"':
            raise Malformed(f"label {k}: value not quoted")
        j = eq + 2
        while text[j] != '"':
            j += 2 if text[j] == "\\" else 1
        out[k] = text[eq + 2:j]
        i = j + 1
        if i < n and text[i] == ",":
            i += 1
    return out


def canonical(name, labels):
    """fleetcheck's series identity: name plus sorted labels, empty values dropped."""
    items = sorted((k, v) for k, v in labels.items() if v != "")
    if not items:
        return name
    return name + "{" + ",".join(f'{k}="{v}"' for k, v in items) + "}"


_NUM = rb"[-+]?(?:[0-9]+\.?[0-9]*(?:[eE][-+]?[0-9]+)?|\.[0-9]+(?:[eE][-+]?[0-9]+)?|[Ii]nf|NaN)"
# One sample line: name, {labels} (optional), value, timestamp (optional).
SAMPLE = re.compile(
    rb"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^\n]*\})? (" + _NUM + rb")(?: (-?[0-9]+))?$", re.M
)


def sample_lines(body):
    """Lines that are neither blank nor comments (a blank-line run may be undercounted)."""
    if not body:
        return 0
    lines = body.count(b"\n") + (0 if body.endswith(b"\n") else 1)
    comments = body.count(b"\n#") + (1 if body[0] == 35 else 0)
    blanks = body.count(b"\n\n") + (1 if body[0] == 10 else 0)
    return lines - comments - blanks


def parse_page(body, capture, now):
    """Parse a text-format page.

    Returns (points, page): `points` counts the samples, `page` maps the raw
    key (`name{labels}` as written) of every sample whose metric name is in
    `capture` (None: all) to (name, value, time); a key repeated on the page
    keeps its first sample. Raises Malformed on a bad line.

    Fast path: one regular expression matches every sample line in C, values
    included; when it did not match every line that is not a comment, the
    line-by-line parser finds the bad line (or the blank lines it miscounted).
    """
    rows = SAMPLE.findall(body)
    if len(rows) != sample_lines(body):
        return parse_page_lines(body, capture, now)
    page = {}
    for name, labels, value, ts in rows:
        if capture is not None and name not in capture:
            continue
        key = name + labels
        if key not in page:
            page[key] = (name, float(value), int(ts) * 0.001 if ts else now)
    return len(rows), page


def parse_page_lines(body, capture, now):
    """[`parse_page`], line by line, naming the first bad line."""
    points = 0
    page = {}
    lineno = 0
    for line in body.split(b"\n"):
        lineno += 1
        if not line or line[0] == 35:  # blank, or '#' (HELP/TYPE/comment)
            continue
        sp = line.find(b" ")
        if sp <= 0:
            raise Malformed(f"line {lineno}: no value")
        br = line.find(b"{", 0, sp)
        if br < 0:
            name = line[:sp]
            key = name
            rest = line[sp + 1:]
        else:
            name = line[:br]
            close = line.rfind(b"}")
            if close < br or line[close + 1:close + 2] != b" ":
                raise Malformed(f"line {lineno}: unterminated labels")
            key = line[:close + 1]
            rest = line[close + 2:]
        points += 1
        ts = None
        if b" " in rest:
            rest, _, ts = rest.partition(b" ")
        try:
            value = float(rest)
        except ValueError:
            raise Malformed(f"line {lineno}: bad value {rest[:40]!r}") from None
        if capture is not None and name not in capture:
            continue
        if key in page:
            continue
        if ts is None:
            t = now
        else:
            try:
                t = int(ts) * 0.001
            except ValueError:
                raise Malformed(f"line {lineno}: bad timestamp {ts[:40]!r}") from None
        page[key] = (name, value, t)
    return points, page


# --------------------------------------------------------------------------
# Per-worker state: host states of this worker's shard


class Series:
    """A series of one host that a rate or zscore rule watches (the other
    kinds read only the current page)."""

    __slots__ = ("value", "time", "last_seen", "prev_value", "prev_time",
                 "prev_seen", "hists")

    def __init__(self, rules):
        self.value = math.nan
        self.time = 0.0
        self.last_seen = None
        self.prev_value = math.nan
        self.prev_time = 0.0
        self.prev_seen = None
        self.hists = {r.idx: deque(maxlen=r.window) for r in rules if r.kind == "zscore"}


class HostState:
    __slots__ = ("host", "series", "prev_round", "last_keys")

    def __init__(self, host, nrules):
        self.host = host
        self.series = {}
        self.prev_round = None
        # stale rules: keys bound to the rule on the previous successful page
        self.last_keys = [set() for _ in range(nrules)]


class Worker:
    """Everything a worker process keeps between rounds."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.rules = load_rules(cfg["rules"])
        names = set()
        for r in self.rules:
            if r.metric is None:
                names = None
                break
            names.add(r.metric)
            if r.ratio_to:
                names.add(r.ratio_to)
        self.capture = names
        self.stale = [r for r in self.rules if r.kind == "stale"]
        self.absent = [r for r in self.rules if r.kind == "absent"]
        # raw key -> (canonical key str, rules watching it); shared by hosts
        self.bind_cache = {}
        self.hosts = {}
        self.session = None

    def bind(self, key, name):
        """(canonical key, rules watching the series, whether one of them
        keeps state: only rate and zscore read past values)."""
        b = self.bind_cache.get(key)
        if b is None:
            skey = key.decode("utf-8", "replace")
            sname = name.decode("utf-8", "replace")
            labels = parse_labels(skey[len(sname) + 1:-1]) if len(skey) > len(sname) else {}
            rules = tuple(r for r in self.rules if r.matches(name, labels))
            stateful = any(r.kind in ("rate", "zscore") for r in rules)
            b = (canonical(sname, labels), rules, stateful)
            self.bind_cache[key] = b
        return b

    def scrape_page(self, st, body, rnd, now, part):
        """Parse one page of host `st` and run the rules; fold into `part`."""
        try:
            points, page = parse_page(body, self.capture, now)
        except (Malformed, ValueError, IndexError) as e:
            part.fail(st.host, rnd, "malformed", str(e))
            return
        part.points += points
        part.scrapes += 1
        host = st.host
        series = st.series
        findings = part.findings
        stale_now = {r.idx: set() for r in self.stale}
        absent_seen = set()
        cache = self.bind_cache
        for key, (name, v, t) in page.items():
            ckey, rules, stateful = cache.get(key) or self.bind(key, name)
            if not rules:
                continue  # only read as a ratio's denominator
            if stateful:
                s = series.get(key)
                if s is None:
                    s = series[key] = Series(rules)
                s.prev_value, s.prev_time, s.prev_seen = s.value, s.time, s.last_seen
                s.value, s.time, s.last_seen = v, t, rnd
            for r in rules:
                k = r.kind
                if k == "stale":
                    stale_now[r.idx].add(key)
                elif k == "threshold":
                    x = v
                    if r.ratio_to is not None:
                        den = page.get(r.ratio_to + key[len(name):])
                        if den is None:
                            continue
                        d = den[1]
                        if d == 0.0 or not math.isfinite(d):
                            continue
                        x = v / d
                    if (r.above is not None and x > r.above) or (
                        r.below is not None and x < r.below
                    ):
                        findings.append((host, rnd, r.name, ckey))
                elif k == "rate":
                    if s.prev_seen is None:
                        continue
                    dt = t - s.prev_time
                    pv = s.prev_value
                    if dt <= 0.0 or not math.isfinite(v) or not math.isfinite(pv):
                        continue
                    rate = (v - pv if v >= pv else v) / dt
                    if (r.above is not None and rate > r.above) or (
                        r.below is not None and rate < r.below
                    ):
                        findings.append((host, rnd, r.name, ckey))
                elif k == "zscore":
                    h = s.hists[r.idx]
                    if len(h) >= r.min_samples and math.isfinite(v):
                        fin = [x for x in h if math.isfinite(x)]
                        if fin:
                            mean = sum(fin) / len(fin)
                            std = math.sqrt(sum((x - mean) * (x - mean) for x in fin) / len(fin))
                            sd = max(std, r.min_stddev, r.min_stddev_ratio * abs(mean))
                            dev = abs(v - mean)
                            if dev != 0.0 and dev / (sd if sd > 0.0 else ZERO_SPREAD) > r.threshold:
                                findings.append((host, rnd, r.name, ckey))
                    h.append(v)
                elif k == "absent":
                    absent_seen.add(r.idx)
                elif k == "fleet_outlier":
                    if math.isfinite(v):
                        part.fleet.append((r.idx, ckey, host, v))
        # host-level rules at the end of the page
        for r in self.stale:
            now_keys = stale_now[r.idx]
            if st.prev_round is not None:
                for key in st.last_keys[r.idx] - now_keys:
                    findings.append((host, rnd, r.name, self.bind_cache[key][0]))
            st.last_keys[r.idx] = now_keys
        for r in self.absent:
            if r.idx not in absent_seen:
                findings.append((host, rnd, r.name, r.metric.decode()))
        st.prev_round = rnd


class Partial:
    """A worker's folded report of one round."""

    __slots__ = ("points", "scrapes", "failures", "findings", "problems", "fleet")

    def __init__(self):
        self.points = 0
        self.scrapes = 0
        self.failures = 0
        self.findings = []  # (host, round, check, series) anomalies
        self.problems = []  # (host, round, check, message) scrape problems
        self.fleet = []  # (rule idx, series, host, value) for fleet_outlier

    def fail(self, host, rnd, check, message):
        self.failures += 1
        self.problems.append((host, rnd, check, message))

    def result(self):
        return (self.points, self.scrapes, self.failures, self.findings,
                self.problems, self.fleet)


WORKER = None


def init_worker(cfg):
    """aiomultiprocess initializer: runs once in each worker process."""
    global WORKER
    die_with_parent()
    WORKER = Worker(cfg)


def die_with_parent():
    """Linux: a worker whose parent was killed (say by the benchmark's
    timeout) is killed too, instead of waiting for tasks forever."""
    try:
        import ctypes
        import signal

        ctypes.CDLL(None).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


async def scan_shard(shard, rnd, hosts):
    """One round of this worker's hosts `[(id, url)]`; returns a Partial."""
    w = WORKER
    cfg = w.cfg
    if w.session is None:
        conn = aiohttp.TCPConnector(limit=cfg["concurrency"], limit_per_host=0,
                                    keepalive_timeout=60, ttl_dns_cache=None)
        w.session = aiohttp.ClientSession(
            connector=conn, timeout=aiohttp.ClientTimeout(total=cfg["timeout_ms"] / 1000),
            auto_decompress=True, skip_auto_headers=("User-Agent",))
    session = w.session
    now = rnd * cfg["step"] if cfg["clock"] == "logical" else time.time()
    max_bytes = cfg["max_page_bytes"]
    headers = {
        "Accept": ACCEPT,
        "Accept-Encoding": "gzip",
        "X-Prometheus-Scrape-Timeout-Seconds": str(cfg["timeout_ms"] / 1000),
        "X-Fleetcheck-Round": str(rnd),
    }
    suffix = f"round={rnd}" if cfg["round_query"] else None
    part = Partial()
    it = iter(hosts)

    async def lane():
        for host, url in it:
            st = w.hosts.get(host)
            if st is None:
                st = w.hosts[host] = HostState(host, len(w.rules))
            if suffix:
                url = f"{url}{'&' if '?' in url else '?'}{suffix}"
            try:
                async with session.get(url, headers=headers) as resp:
                    if resp.status != 200:
                        part.fail(host, rnd, "http_status", f"HTTP status {resp.status}")
                        continue
                    if (resp.content_length or 0) > max_bytes:
                        part.fail(host, rnd, "oversize", f"page over {max_bytes} bytes")
                        continue
                    body = await resp.read()
            except asyncio.TimeoutError:
                part.fail(host, rnd, "timeout", "timed out")
                continue
            except aiohttp.ClientConnectorError as e:
                part.fail(host, rnd, "unreachable", str(e))
                continue
            except aiohttp.ClientError as e:
                part.fail(host, rnd, "http", str(e))
                continue
            if len(body) > max_bytes:
                part.fail(host, rnd, "oversize", f"page over {max_bytes} bytes")
                continue
            w.scrape_page(st, body, rnd, now, part)

    await asyncio.gather(*(lane() for _ in range(min(cfg["concurrency"], len(hosts)))))
    return part.result()


class ShardScheduler(Scheduler):
    """Sends the task of shard k to queue k: with one queue per process, a
    host's state always lives in the same worker."""

    def __init__(self):
        self.qids = []

    def register_queue(self, tx):
        qid = len(self.qids)
        self.qids.append(qid)
        return qid

    def register_process(self, qid):
        pass

    def schedule_task(self, task_id, func, args, kwargs):
        return self.qids[args[0] % len(self.qids)]

    def complete_task(self, task_id):
        pass


# --------------------------------------------------------------------------
# Parent: rounds, fleet-level rules, the summary


def median(v):
    v.sort()
    n = len(v)
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2.0


def fleet_outliers(rules, values, rnd):
    """fleet_outlier findings of one round from [(rule, series, host, value)]."""
    groups = {}
    for ri, key, host, v in values:
        groups.setdefault((ri, key), []).append((host, v))
    out = []
    for (ri, key), hv in groups.items():
        r = rules[ri]
        vals = [v for _, v in hv]
        med = median(vals)
        mad = median([abs(x - med) for x in vals])
        if len(vals) < r.min_hosts:
            continue
        scale = max(1.4826 * mad, r.min_mad, r.min_mad_ratio * abs(med))
        scale = scale if scale > 0.0 else ZERO_SPREAD
        for host, v in hv:
            if abs(v - med) / scale > r.threshold:
                out.append((host, rnd, r.name, key))
    return out


def cpu_secs():
    s = resource.getrusage(resource.RUSAGE_SELF)
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime, c.ru_utime + c.ru_stime


async def run(args, urls):
    cfg = {
        "rules": args.rules,
        "concurrency": args.concurrency,
        "timeout_ms": args.timeout_ms,
        "max_page_bytes": args.max_page_bytes,
        "round_query": args.round_query,
        "clock": args.clock,
        "step": args.step,
    }
    rules = load_rules(args.rules)
    P = args.processes
    shards = [[] for _ in range(P)]
    for host, url in enumerate(urls):
        shards[host % P].append((host, url))
    findings, problems = [], []
    points = scrapes = failures = 0
    rounds_done = 0
    self0, child0 = cpu_secs()
    start = time.perf_counter()
    pool = amp.Pool(processes=P, queuecount=P, scheduler=ShardScheduler(),
                    initializer=init_worker, initargs=(cfg,),
                    loop_initializer=uvloop.new_event_loop)
    try:
        for rnd in range(args.rounds):
            parts = await asyncio.gather(
                *(pool.apply(scan_shard, (k, rnd, shards[k])) for k in range(P)))
            fleet = []
            for p_points, p_scrapes, p_fail, p_find, p_prob, p_fleet in parts:
                points += p_points
                scrapes += p_scrapes
                failures += p_fail
                findings.extend(p_find)
                problems.extend(p_prob)
                fleet.extend(p_fleet)
            findings.extend(fleet_outliers(rules, fleet, rnd))
            rounds_done += 1
    finally:
        pool.close()
        await pool.join()
    wall = time.perf_counter() - start
    self1, child1 = cpu_secs()
    findings.sort()
    return {
        "impl": "python",
        "python": sys.version.split()[0],
        "versions": {
            "aiomultiprocess": getattr(amp, "__version__", "?"),
            "aiohttp": aiohttp.__version__,
            "uvloop": uvloop.__version__,
        },
        "processes": P,
        "concurrency": args.concurrency,
        "hosts": len(urls),
        "rounds": rounds_done,
        "points": points,
        "scrapes": scrapes,
        "scrape_failures": failures,
        "wall_secs": wall,
        "points_per_sec": points / wall if wall > 0 else 0.0,
        "cpu_parent_secs": self1 - self0,
        "cpu_workers_secs": child1 - child0,
        "cpu_secs": (self1 - self0) + (child1 - child0),
        "anomalies": len(findings),
        "findings": [list(f) for f in findings],
        "scrape_problems": [list(p) for p in problems[:50]],
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fleet", help="base URL of `fleetcheck serve-fleet` (http://ADDR)")
    ap.add_argument("--hosts", type=int, default=1000, help="hosts of --fleet")
    ap.add_argument("--targets", help="file with one target URL per line (# comments)")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--rules", help="fleetcheck rules file (TOML); default: built-in rules")
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--concurrency", type=int, default=64,
                    help="concurrent scrapes per worker process")
    ap.add_argument("--round-query", action="store_true",
                    help="append ?round=N to each URL (the simulated fleet)")
    ap.add_argument("--clock", choices=("logical", "wall"), default="logical")
    ap.add_argument("--step", type=float, default=15.0, help="seconds per round (logical clock)")
    ap.add_argument("--timeout-ms", type=int, default=10_000)
    ap.add_argument("--max-page-bytes", type=int, default=16 << 20)
    args = ap.parse_args()
    if MISSING:
        print(f"fleetcheck_py: missing Python packages: {', '.join(MISSING)} "
              f"(pip install -r {os.path.join(os.path.dirname(__file__), 'requirements.txt')})",
              file=sys.stderr)
        return 3
    if args.processes < 1 or args.concurrency < 1 or args.rounds < 1:
        print("fleetcheck_py: --processes, --concurrency and --rounds must be >= 1",
              file=sys.stderr)
        return 2
    if args.targets:
        with open(args.targets) as f:
            urls = [u for u in (ln.split("#")[0].strip() for ln in f) if u]
    elif args.fleet:
        urls = [f"{args.fleet.rstrip('/')}/host/{i}/metrics" for i in range(args.hosts)]
    else:
        print("fleetcheck_py: give --fleet URL or --targets FILE", file=sys.stderr)
        return 2
    if not urls:
        print("fleetcheck_py: no targets", file=sys.stderr)
        return 2
    load_rules(args.rules)  # a bad rules file fails here, before the pool starts
    out = uvloop.run(run(args, urls))
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

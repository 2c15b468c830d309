"""The soak's verdict and report: the final read of the database judged against the fake agents'
ground truth (nothing lost, nothing duplicated, every state true), the figures, and the table.
Used by bench/soak.py.
"""
from __future__ import annotations

import argparse
import bisect
from collections import Counter, defaultdict
from typing import Any

import sqlalchemy as sa

from bench.soak_drivers import Faults, Submitter, Window
from bench.soak_fleet import JOB_NAME, NODE_LOSS, RECORD_GRACE_S, TERMINAL, Run, SoakAgent, SoakFarm, stats, wall

# ---- the verdict ---------------------------------------------------------------------------------


def ts(x: Any) -> float | None:
    return None if x is None else float(x.timestamp())


def reason_code(msg: str) -> str:
    return (msg or "").split(":", 1)[0].strip() or "-"


def analyse(engine: sa.Engine, args: argparse.Namespace, farm: SoakFarm, faults: Faults, sub: Submitter,
            interval: float) -> dict[str, Any]:
    with engine.connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT id, root_id, attempt, status, node, error_message, name, created_at, assigned_at, finished_at, "
            "superseded_by, acked FROM jobs")).mappings().all()
        node_events = conn.execute(sa.text(
            "SELECT entity_id, from_state, to_state, at FROM events WHERE entity = 'node' ORDER BY id")).all()
    by_root: dict[str, list[Any]] = defaultdict(list)
    by_key: dict[tuple[str, int], Any] = {}
    names: Counter[str] = Counter()
    for r in rows:
        by_root[r["root_id"]].append(r)
        by_key[(r["root_id"], int(r["attempt"]))] = r
        if int(r["attempt"]) == 1:
            names[r["name"]] += 1
    for lst in by_root.values():
        lst.sort(key=lambda r: int(r["attempt"]))
    timeout = args.node_timeout
    slack = interval + 1.5  # a node back may be declared LOST by a sweep that ran just before its next beat

    # Agents' ground truth: windows when a node could not be reached.
    cut: dict[str, list[Window]] = defaultdict(list)
    for w in faults.windows:
        if w.kind != "restart":
            cut[w.target].append(w)

    def rel(t: float | None) -> str:
        return "?" if t is None else f"+{t - faults.t0_wall:.1f}s"

    def describe(row: Any) -> str:
        if row is None:
            return "no such attempt"
        return (f"{row['status']} {reason_code(row['error_message'])} at {rel(ts(row['finished_at']))}, "
                f"assigned {rel(ts(row['assigned_at']))}")

    coordinator_kills = sorted(w.start for w in faults.windows if w.kind == "restart")

    def told(node: str, after: float, before: float) -> bool:
        """A heartbeat of `node` sent after `after` was answered by `before`, and the coordinator lived
        on for RECORD_GRACE_S after answering: the coordinator heard, and had time to record it (a
        heartbeat's answer waits for the record at most 3 s; a slower Inspect finishes after it)."""
        agent = farm.by_name[node]
        assert isinstance(agent, SoakAgent)
        k = bisect.bisect_left(agent.hb_sent, after)
        if k >= len(agent.hb_sent) or agent.hb_answered[k] > before:
            return False
        answered = agent.hb_answered[k]
        i = bisect.bisect_left(coordinator_kills, answered)
        return i >= len(coordinator_kills) or coordinator_kills[i] > answered + RECORD_GRACE_S

    def cut_at(node: str, t: float, extra: float = 0.0) -> Window | None:
        for w in cut.get(node, ()):
            if w.start <= t <= (w.end if w.end is not None else float("inf")) + extra:
                return w
        return None

    # -- jobs: completed, ended otherwise, lost -------------------------------------------------
    acked = dict(sub.acked)
    lost: list[str] = []
    finals: Counter[str] = Counter()
    completed = 0
    for i, root in sorted(acked.items()):
        attempts = by_root.get(root)
        if not attempts:
            lost.append(f"{JOB_NAME.format(i)} ({root}): acknowledged to the client, not in the database")
            continue
        last = attempts[-1]
        if last["status"] not in TERMINAL:
            runs = farm.runs.get((root, int(last["attempt"])), [])
            truth = ("; " + ", ".join(f"on {x.node} since {rel(x.start)}: {x.how or 'running'}" for x in runs)
                     if runs else "; no agent ever ran it")
            lost.append(f"{root}: attempt {last['attempt']} still {last['status']} on {last['node']} "
                        f"(created {rel(ts(last['created_at']))}, assigned {rel(ts(last['assigned_at']))}{truth})")
        elif last["status"] == "SUCCESS":
            completed += 1
        else:
            finals[f"{last['status']} {reason_code(last['error_message'])}"] += 1
    never_acked = sub.n - len(acked)
    double_submits = sorted(n for n, c in names.items() if c > 1)
    examples_other = [f"{r[-1]['id']}: {r[-1]['status']} {r[-1]['error_message']}" for r in by_root.values()
                      if r[-1]["status"] in TERMINAL and r[-1]["status"] != "SUCCESS"][:5]

    # -- duplicated ------------------------------------------------------------------------------
    dup: dict[str, set[str]] = defaultdict(set)
    dup_examples: list[str] = []
    reruns_after_loss = 0
    runs_by_root: dict[str, list[Run]] = defaultdict(list)
    for (root, attempt), runs in farm.runs.items():
        runs_by_root[root] += runs
        if len(runs) > 1:
            dup["same attempt ran twice"].add(root)
            dup_examples.append(f"{root} attempt {attempt} ran on {[r.node for r in runs]}")
    end_of_time = wall()
    fence_bound = args.fence_bound
    for root, runs in runs_by_root.items():
        current = []
        for x in runs:
            if x.how != "completed" or x.end is None:
                continue
            row = by_key.get((root, x.attempt))
            verdict_t = ts(row["finished_at"]) if row is not None else None
            if (row is None or row["status"] == "SUCCESS" or verdict_t is None
                    or told(x.node, x.end, verdict_t)):
                current.append(x)
            elif reason_code(row["error_message"]) in NODE_LOSS:
                reruns_after_loss += 1
        if len(current) > 1:
            dup["ran to completion twice"].add(root)
            dup_examples.append(f"{root} completed twice: " + "; ".join(
                f"attempt {x.attempt} on {x.node} {rel(x.start)}-{rel(x.end)} "
                f"(database: {describe(by_key.get((root, x.attempt)))}; faults on the node: "
                f"{[(w.kind, rel(w.start), rel(w.end)) for w in cut.get(x.node, ())] or 'none'})"
                for x in current))
        ordered = sorted(runs, key=lambda r: r.attempt)
        for i, old in enumerate(ordered):
            for new in ordered[i + 1:]:
                if new.attempt == old.attempt:
                    continue
                if not (old.start < (new.end or end_of_time) and new.start < (old.end or end_of_time)):
                    continue
                row = by_key.get((root, old.attempt))
                excused = False
                if row is not None and reason_code(row["error_message"]) in NODE_LOSS:
                    cw = cut_at(old.node, ts(row["finished_at"]) or 0.0, slack)
                    excused = cw is not None and cw.end is not None and (
                        old.end is not None and old.end <= cw.end + fence_bound)
                if not excused:
                    dup["two attempts at once"].add(root)
                    dup_examples.append(
                        f"{root}: attempt {old.attempt} on {old.node} {rel(old.start)}-{rel(old.end)} ({old.how}) "
                        f"overlaps attempt {new.attempt} on {new.node} {rel(new.start)}-{rel(new.end)}; database: "
                        f"attempt {old.attempt} {describe(row)}; faults on {old.node}: "
                        f"{[(w.kind, rel(w.start), rel(w.end)) for w in cut.get(old.node, ())] or 'none'}")
    duplicated = set().union(*dup.values()) if dup else set()

    # -- final states against what the agents did ------------------------------------------------
    untrue: list[str] = []
    loss_verdicts_completed = 0
    for key, r in by_key.items():
        runs = farm.runs.get(key, [])
        status, code = r["status"], reason_code(r["error_message"])
        if status not in TERMINAL:
            continue
        done = [x for x in runs if x.how == "completed"]
        if status == "SUCCESS":
            if not any(x.node == r["node"] for x in done):
                untrue.append(f"{r['id']}: SUCCESS on {r['node']} but no agent completed it (runs: "
                              f"{[(x.node, x.how) for x in runs]})")
        elif code in NODE_LOSS:
            loss_verdicts_completed += bool(done)
        elif code == "LAUNCH_FAILED":
            if runs:
                untrue.append(f"{r['id']}: {status} {r['error_message'][:80]!r} but it ran on {[x.node for x in runs]}")
        elif done:
            untrue.append(f"{r['id']}: {status} {r['error_message'][:80]!r} but the agent completed it")
    for key, runs in farm.runs.items():
        if key not in by_key:
            untrue.append(f"{key[0]} attempt {key[1]} ran on {[x.node for x in runs]} but the database has no such "
                          "attempt")

    # -- indices: completions recorded as SUCCESS (agent end, database end), node-loss verdicts ----
    recorded: list[tuple[float, str, float]] = []  # (agent completion, node, database finished_at)
    for key, runs in farm.runs.items():
        row = by_key.get(key)
        if row is None or row["status"] != "SUCCESS" or row["finished_at"] is None:
            continue
        for x in runs:
            if x.how == "completed" and x.end is not None and x.node == row["node"]:
                recorded.append((x.end, x.node, ts(row["finished_at"])))  # type: ignore[arg-type]
    recorded.sort()
    recorded_by_node: dict[str, list[tuple[float, str, float]]] = defaultdict(list)
    for rec in recorded:
        recorded_by_node[rec[1]].append(rec)
    loss_ends: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        if r["finished_at"] is not None and reason_code(r["error_message"]) in NODE_LOSS:
            loss_ends[r["node"]].append(ts(r["finished_at"]))  # type: ignore[arg-type]
    for v in loss_ends.values():
        v.sort()

    def between(xs: list[tuple[float, str, float]], lo: float, hi: float) -> list[tuple[float, str, float]]:
        return xs[bisect.bisect_left(xs, (lo,)):bisect.bisect_right(xs, (hi, "\uffff"))]

    # -- nodes: lost, false losses, missed losses -------------------------------------------------
    restarts = [w for w in faults.windows if w.kind == "restart"]
    # A silent node is shown UNREACHABLE now (issue 12); with --lost-after 0 its jobs are given up
    # at that moment, as the soak's "declared LOST" counts them.
    lost_events = [(n, t) for n, frm, to, at in node_events
                   if to in ("LOST", "UNREACHABLE") and (t := ts(at)) is not None]
    lost_by_node: dict[str, list[float]] = defaultdict(list)
    for node, t in lost_events:
        lost_by_node[node].append(t)
    false_losses: list[str] = []
    for node, t in lost_events:
        agent = farm.by_name.get(node)
        if not isinstance(agent, SoakAgent):
            continue
        replies = agent.hb_answered  # in time order
        k = bisect.bisect_right(replies, t - 0.2)
        if k and agent.hb_sent[k - 1] >= t - (timeout - 1.5):
            false_losses.append(f"{node} LOST at +{t - faults.t0_wall:.1f}s; the coordinator answered its "
                                f"heartbeat {t - replies[k - 1]:.1f}s before")
    missed: list[str] = []
    to_lost: list[float] = []
    loss_to_true: list[float] = []
    heal_to_fenced: list[float] = []
    back_to_recorded: list[float] = []
    fences_without_fault = 0
    for node, ws in cut.items():
        for w in ws:
            end = w.end if w.end is not None else end_of_time
            lt = [t for t in lost_by_node.get(node, ()) if w.start <= t <= end + slack]
            if not lt:
                # A restarted coordinator counts a node's silence from its own start (no wall clocks).
                since = max([w.start, *[r.end for r in restarts if r.end is not None and w.start < r.end < end]])
                if end - since > timeout + 2.0:
                    missed.append(f"{node}: {w.kind} {rel(w.start)}-{rel(end)}, silent {end - since:.1f}s for "
                                  "the coordinator, never declared LOST")
                # A short outage: the jobs that ended meanwhile must be recorded once it is back.
                back_to_recorded += [max(0.0, db_t - end) for _, _, db_t in
                                     between(recorded_by_node.get(node, []), w.start, end)]
                continue
            to_lost.append(lt[0] - w.start)
            ends = loss_ends.get(node, [])
            ended = ends[bisect.bisect_left(ends, w.start):bisect.bisect_right(ends, end + slack)]
            loss_to_true.append(max([lt[0], *ended]) - w.start)
    for runs in farm.runs.values():
        for x in runs:
            if x.how != "fenced" or x.end is None:
                continue
            before = [w.end for w in cut.get(x.node, ()) if w.end is not None and w.end <= x.end]
            if before:
                heal_to_fenced.append(x.end - max(before))
            else:
                fences_without_fault += 1

    # -- coordinator restarts ------------------------------------------------------------------
    restart_s = [w.end - w.start for w in restarts if w.end is not None]
    restart_to_recorded: list[float] = []
    for w in restarts:
        if w.end is not None:
            # Only completions on agents that were up meanwhile: the others wait for their agent.
            restart_to_recorded += [db_t - w.start for agent_t, node, db_t in between(recorded, w.start, w.end)
                                    if not any(c.start <= db_t and (c.end is None or c.end >= agent_t)
                                               for c in cut.get(node, ()))]

    # -- latencies -------------------------------------------------------------------------------
    completion_to_db = [max(0.0, db_t - agent_t) for agent_t, _, db_t in recorded]
    queue_wait = [ts(r["assigned_at"]) - ts(r["created_at"]) for r in rows  # type: ignore[operator]
                  if r["assigned_at"] is not None]
    rtt: list[tuple[float, float, str]] = []  # (round trip, sent, node) of every answered heartbeat
    for agent in farm.agents:
        assert isinstance(agent, SoakAgent)
        rtt += [(b - a, a, agent.name) for a, b in zip(agent.hb_sent, agent.hb_answered, strict=True)]
    slow_hb = [f"{node} at {rel(sent)}: {d:.2f} s" for d, sent, node in sorted(rtt, reverse=True)[:5]]
    submit_to_launch = [farm.first_launch[root] - t for root, t in sub.sent_at.items() if root in farm.first_launch]
    per_job = Counter(len(v) for v in by_root.values())
    requeues = Counter(reason_code(r["error_message"]) for r in rows if r["superseded_by"])

    return {
        "jobs": {"asked": sub.n, "acknowledged": len(acked), "never_acknowledged": never_acked,
                 "completed": completed, "ended_otherwise": dict(finals.most_common()),
                 "ended_otherwise_examples": examples_other, "lost": len(lost), "lost_examples": lost[:10],
                 "duplicated": len(duplicated), "duplicated_by_kind": {k: len(v) for k, v in dup.items()},
                 "duplicated_examples": dup_examples[:10], "reruns_after_node_loss": reruns_after_loss,
                 "node_loss_verdicts_on_completed_runs": loss_verdicts_completed,
                 "attempts_per_job": {str(k): v for k, v in sorted(per_job.items())},
                 "requeued_by_reason": dict(requeues), "double_submissions": len(double_submits),
                 "double_submission_examples": double_submits[:5], "submits_retried": sub.retried,
                 "submit_refused": sub.refused[:5], "submit_errors": dict(sub.errors),
                 "untrue_final_states": len(untrue), "untrue_examples": untrue[:10]},
        "nodes": {"lost_events": len(lost_events), "false_losses": len(false_losses),
                  "false_loss_examples": false_losses[:10], "missed_losses": len(missed),
                  "missed_loss_examples": missed[:10], "fences": farm.fenced,
                  "fences_without_fault": fences_without_fault, "slowest_heartbeats": slow_hb},
        "true_state_s": {
            "cut_off_to_node_lost": stats(to_lost),
            "cut_off_to_jobs_stopped_and_requeued": stats(loss_to_true),
            "node_back_to_superseded_attempts_fenced": stats(heal_to_fenced),
            "agent_back_to_jobs_ended_meanwhile_recorded": stats(back_to_recorded),
            "coordinator_kill_to_serving": stats(restart_s),
            "coordinator_kill_to_jobs_ended_meanwhile_recorded": stats(restart_to_recorded),
            "completion_to_success_recorded": stats(completion_to_db),
            "submit_to_first_launch": stats(submit_to_launch),
            "queued_to_assigned": stats(queue_wait),
            "heartbeat_round_trip": stats([d for d, _, _ in rtt]),
        },
    }


# ---- report ----------------------------------------------------------------------------------------


def verdict(res: dict[str, Any]) -> list[str]:
    j, n = res["jobs"], res["nodes"]
    bad = []
    for what, val in (("lost jobs", j["lost"]), ("duplicated jobs", j["duplicated"]),
                      ("untrue final states", j["untrue_final_states"]), ("false node losses", n["false_losses"]),
                      ("missed node losses", n["missed_losses"]),
                      ("invariant violations", len(res["invariants"]["violations"])),
                      ("leftovers on agents", res["agents"]["left_live"]),
                      ("jobs never acknowledged to the client", j["never_acknowledged"]),
                      ("jobs created twice by a retried SubmitJob", j["double_submissions"])):
        if val:
            bad.append(f"{val} {what}")
    return bad


def warnings(res: dict[str, Any]) -> list[str]:
    """Not a broken promise, but the coordinator did something it should not have (see the README)."""
    out = []
    ag = res["agents"]
    stale = ag["refused"].get("already acknowledged", 0) + ag["refused"].get("older attempt", 0)
    if stale:
        out.append(f"{stale} Launch calls for an attempt that had already ended (the agent refused them; an agent "
                   "that had lost its state would have run the job again)")
    if ag["refused"].get("another attempt live", 0):
        out.append(f"{ag['refused']['another attempt live']} Launch calls refused because an older attempt of the "
                   "job was still live on that agent (ABORTED: the job is queued again)")
    if ag["probe_calls"]:
        out.append(f"{ag['probe_calls']} ProbeOutputs calls: the coordinator judged an attempt the agent no longer "
                   "held, most likely one it had itself ended and acknowledged moments before")
    return out


def fmt_s(d: dict[str, Any]) -> str:
    if not d["n"]:
        return "n/a (no such event)"
    return f"max {d['max_s']:.2f} s, p50 {d['p50_s']:.2f} s, p99 {d['p99_s']:.2f} s (n={d['n']})"


def print_table(res: dict[str, Any]) -> None:
    m, a, j, n, t, c = res["machine"], res["args"], res["jobs"], res["nodes"], res["true_state_s"], res["coordinator"]
    print(f"gpufleet soak: {m['cpus']} CPUs, Python {m['python']}, load {m['loadavg_at_start']:g} at start; "
          f"{res['database']}; seed {a['seed']}")
    print(f"fleet: {a['agents']} fake agents x {a['gpus_per_agent']} GPUs, jobs run "
          f"{a['run_min']:g}-{a['run_max']:g} s; "
          f"coordinator --node-timeout {a['node_timeout']:g} --reconcile-interval {a['reconcile_interval']:g}"
          + (f" {' '.join(a['coordinator_arg'])}" if a["coordinator_arg"] else ""))
    f = res["faults"]
    print(f"faults over {a['seconds']:g} s: {f['kill']} agent kills ({f['kill_lost']} long enough to be LOST), "
          f"{f['partition']} partitions, {f['restart']} coordinator restarts"
          + (f"; skipped (too many agents faulty at once): {f['skipped']}" if f["skipped"] else "")
          + f"; wall {res['wall_s']:.0f} s, settled in {res['settle_s']:.1f} s")
    print(f"jobs: {j['acknowledged']:,} submitted, {j['completed']:,} completed, "
          f"{sum(j['ended_otherwise'].values()):,} ended otherwise"
          + (f" ({', '.join(f'{k}: {v}' for k, v in j['ended_otherwise'].items())})" if j["ended_otherwise"] else ""))
    print(f"  lost        {j['lost']:>6}   (must be 0)")
    print(f"  duplicated  {j['duplicated']:>6}   (must be 0)"
          + (f"  {j['duplicated_by_kind']}" if j["duplicated"] else ""))
    print(f"  untrue final states {j['untrue_final_states']}, false node losses {n['false_losses']}, "
          f"missed node losses {n['missed_losses']}, invariant violations {len(res['invariants']['violations'])} "
          f"({res['invariants']['checks']} checks), left live on agents {res['agents']['left_live']}, "
          f"held unacknowledged {res['agents']['left_held']}")
    print(f"  attempts per job {j['attempts_per_job']}; requeued by {j['requeued_by_reason'] or '-'}; "
          f"re-runs after node loss {j['reruns_after_node_loss']}; double submissions {j['double_submissions']}; "
          f"submits answered by a retry {j['submits_retried']}; "
          f"fences without a fault before them {n['fences_without_fault']}")
    print("fault -> true state:")
    for key, label in (("cut_off_to_node_lost", "cut off -> node LOST"),
                       ("cut_off_to_jobs_stopped_and_requeued", "cut off -> its jobs STOPPED+requeued"),
                       ("node_back_to_superseded_attempts_fenced", "node back -> superseded attempts fenced"),
                       ("agent_back_to_jobs_ended_meanwhile_recorded", "agent back -> jobs ended meanwhile recorded"),
                       ("coordinator_kill_to_serving", "coordinator SIGKILL -> serving"),
                       ("coordinator_kill_to_jobs_ended_meanwhile_recorded",
                        "coordinator SIGKILL -> jobs ended meanwhile recorded"),
                       ("completion_to_success_recorded", "any job: completion -> SUCCESS recorded"),
                       ("submit_to_first_launch", "any job: SubmitJob -> first Launch"),
                       ("queued_to_assigned", "any attempt: QUEUED -> assigned (scheduler)"),
                       ("heartbeat_round_trip", "any heartbeat: sent -> answered")):
        print(f"  {label:<52} {fmt_s(t[key])}")
    mib = 1 / 1024
    print(f"coordinator: RSS max {c['rss_max_kb'] * mib:.0f} MiB, at the end {c['rss_end_kb'] * mib:.0f} MiB "
          f"(VmHWM {c['vmhwm_end_kb'] * mib:.0f} MiB) over {c['processes']} processes, longest-lived "
          f"{c['longest_process_s']:.0f} s; CPU {c['cpu_s']:.0f} s; {c['log_errors']} error lines, "
          f"{c['log_tracebacks']} tracebacks in its log")
    u = res["cpu"]
    print(f"CPU over {u['wall_s']:.0f} s (seconds): coordinator {u['coordinator_s']:.0f}, this process (agents, "
          f"client, checks) {u['soak_process_s']:.0f}, PostgreSQL {u['postgres_s']:.0f}; the machine was "
          f"{u['machine_busy_pct']:.0f} % busy (all {u['cpus']:.0f} CPUs, other work included), load "
          f"{res['machine']['loadavg_at_end']:g} at the end")
    s = res["submit"]
    print(f"client: SubmitJob p50 {s['p50_ms']:.1f} ms, p99 {s['p99_ms']:.1f} ms, max {s['max_ms']:.0f} ms; "
          f"errors {s['errors'] or '-'}; most queued {res['max_queued']:,}")
    ag = res["agents"]
    print(f"agents: {ag['launch_calls']:,} Launch calls ({ag['duplicate_launches']} repeats, refused "
          f"{ag['refused'] or '-'}), {ag['stop_calls']} Stops, {ag['fenced']} fenced, {ag['probe_calls']} probes, "
          f"{ag['heartbeats']:,} heartbeats ({ag['heartbeat_errors']} failed, {ag['reregisters']} reregister), "
          f"calls held by partitions {ag['blackholed'] or '-'}")
    for key in ("lost_examples", "duplicated_examples", "untrue_examples", "ended_otherwise_examples"):
        if j[key]:
            print(f"{key.replace('_', ' ')}:")
            for e in j[key][:5]:
                print(f"  {e}")
    for key in ("false_loss_examples", "missed_loss_examples"):
        if n[key]:
            print(f"{key.replace('_', ' ')}:")
            for e in n[key][:5]:
                print(f"  {e}")
    if res["invariants"]["violations"]:
        print("invariant violations:")
        for e in res["invariants"]["violations"][:10]:
            print(f"  {e}")
    for w in res["warnings"]:
        print(f"warning: {w}")
    if res["errors"]:
        print("soak errors: " + "; ".join(res["errors"][:5]))
    print("PASS: nothing lost, nothing duplicated, every state true" if not res["problems"]
          else "FAIL: " + ", ".join(res["problems"]))

import { useEffect, useRef, useState } from "preact/hooks";
import { api, paths } from "./api.js";
import { Chart } from "./chart.jsx";
import { EventTable, useEvents } from "./events.jsx";
import { Window, guardrailCloseness, ms, pct } from "./live.js";
import { Confirm, Loading, Meter, Problem, bytes, num, rate } from "./util.jsx";

const POLL_MS = 2000;

// A served model, live: per version its traffic over the last minutes, its policy's state
// (a canary's ramp and guardrails, an A/B test's p-value and interval, shadow diffs), its
// memory, its events, and the actions that change its traffic.
export function Live({ model }) {
  const win = useRef(null);
  const ab = useRef([]);
  const [state, setState] = useState({ stats: null, policy: null, point: null, error: null, tick: 0 });
  useEffect(() => {
    win.current = new Window(600, 10);
    ab.current = [];
    let alive = true;
    let busy = false;
    const run = async () => {
      if (busy) return;
      busy = true;
      try {
        const [stats, policy] = await Promise.all([api("GET", paths.stats(model)), api("GET", paths.policy(model))]);
        if (!alive) return;
        const t = Date.now() / 1000;
        const point = win.current.add(t, stats);
        const r = policy.report;
        if (r && r.p_value != null && r.control) {
          ab.current.push({ t, p: r.p_value, low: r.ci_low, high: r.ci_high, diff: r.difference });
          while (ab.current.length && t - ab.current[0].t > 600) ab.current.shift();
        }
        setState((s) => ({ stats, policy, point: point || s.point, error: null, tick: s.tick + 1 }));
      } catch (error) {
        if (!alive) return;
        if (error.status === 404) {
          // Not served here (or no longer): say so once instead of asking every 2 s.
          clearInterval(id);
          error.message = `${model} is not served by this server (${error.message})`;
        }
        setState((s) => ({ ...s, error }));
      } finally {
        busy = false;
      }
    };
    let id = null;
    run();
    id = setInterval(run, POLL_MS);
    return () => {
      alive = false;
      clearInterval(id);
    };
  }, [model]);
  const [events, eventsError] = useEvents(model, 100);
  const { stats, policy, point, error } = state;
  if (!stats) {
    return (
      <main id="main">
        <h1>{model}</h1>
        <Problem error={error} />
        {error ? null : <Loading what="the deployment" />}
      </main>
    );
  }
  const versions = stats.versions.map((v) => v.version);
  return (
    <main id="main">
      <h1>
        {model} <span class="muted small">live</span>
      </h1>
      <p>
        Policy <strong data-testid="policy-name">{policy.name}</strong>: {policy.describe}
        {stats.alias ? <> · follows <strong>@{stats.alias}</strong></> : null} ·{" "}
        <a href={`#/registry/${encodeURIComponent(model)}`}>registry</a>
      </p>
      <Problem error={error} />
      <section aria-labelledby="now-h">
        <h2 id="now-h">Versions now <span class="muted small">(last 10 s)</span></h2>
        <NowTable stats={stats} point={point} />
      </section>
      <section aria-labelledby="traffic-h">
        <h2 id="traffic-h">Traffic over the last minutes</h2>
        {win.current.points.length < 1 ? (
          <p class="muted">Collecting: the charts start after two polls ({POLL_MS / 1000} s apart).</p>
        ) : (
          <div class="charts">
            <Chart title="Requests per second" unit="/s" names={versions} data={win.current.columns("rate", versions)} />
            <Chart title="Traffic share" unit="%" names={versions} data={win.current.columns("share", versions, 100)} />
            <Chart title="p50 latency" unit="ms" names={versions} data={win.current.columns("p50", versions, 1e3)} />
            <Chart title="p99 latency" unit="ms" names={versions} data={win.current.columns("p99", versions, 1e3)} />
            <Chart title="Errors per second" unit="/s" names={versions} data={win.current.columns("errors", versions)} />
          </div>
        )}
      </section>
      <PolicyPanel policy={policy} ab={ab.current} />
      {stats.shadows && stats.shadows.length ? <Shadows list={stats.shadows} /> : null}
      {stats.memory ? <Memory stats={stats} /> : null}
      <Actions model={model} versions={versions} policy={policy} />
      <section aria-labelledby="events-h">
        <h2 id="events-h">Events</h2>
        <Problem error={eventsError} />
        <EventTable events={events} model={model} />
      </section>
    </main>
  );
}

function NowTable({ stats, point }) {
  return (
    <div class="scroll" tabIndex={0} role="region" aria-label="versions now">
      <table data-testid="live-versions">
        <thead>
          <tr>
            <th scope="col">Version</th><th scope="col">State</th><th scope="col">Health</th>
            <th scope="col" class="num">Requests/s</th><th scope="col" class="num">Share</th>
            <th scope="col" class="num">Errors/s</th><th scope="col" class="num">p50</th>
            <th scope="col" class="num">p99</th><th scope="col" class="num">In flight</th>
            <th scope="col" class="num">Requests</th><th scope="col" class="num">Failed</th>
            <th scope="col" class="num">Memory</th>
          </tr>
        </thead>
        <tbody>
          {stats.versions.map((v) => {
            const x = point && point.versions.get(v.version);
            return (
              <tr key={v.version} data-version={v.version}>
                <th scope="row">{v.version}{stats.anomalous && stats.anomalous.includes(v.version) ? <span class="badge bad">anomalous</span> : null}</th>
                <td>{v.state}</td>
                <td><span class={`badge ${v.health}`}>{v.health}</span></td>
                <td class="num">{x ? rate(x.rate) : "–"}</td>
                <td class="num" data-testid="share">{x ? pct(x.share) : "–"}</td>
                <td class="num">{x ? rate(x.errors) : "–"}</td>
                <td class="num">{x ? ms(x.p50) : "–"}</td>
                <td class="num">{x ? ms(x.p99) : "–"}</td>
                <td class="num">{v.in_flight}</td>
                <td class="num" data-testid="requests">{v.requests}</td>
                <td class="num">{v.failed}</td>
                <td class="num">{v.memory_bytes ? bytes(v.memory_bytes) : "–"}</td>
              </tr>
            );
          })}
        </tbody>
      </table>
    </div>
  );
}

function PolicyPanel({ policy, ab }) {
  const r = policy.report;
  if (r && r.stable && r.candidate && r.phase) return <CanaryPanel r={r} />;
  if (r && r.control && r.p_value != null) return <AbPanel r={r} history={ab} />;
  return null;
}

function CanaryPanel({ r }) {
  const rails = guardrailCloseness(r);
  return (
    <section aria-labelledby="canary-h" data-testid="canary">
      <h2 id="canary-h">Canary: {r.stable} → {r.candidate}</h2>
      <p>
        Phase <strong data-testid="canary-phase">{r.phase}</strong>, step{" "}
        <strong data-testid="canary-step">{r.step}</strong> of {r.steps.length} (candidate share{" "}
        <strong>{pct(r.share)}</strong>){r.waiting ? ` · waiting ${r.waiting}` : ""}
      </p>
      <ol class="ramp" aria-label="ramp steps">
        {r.steps.map((s, i) => (
          <li key={i} class={i + 1 < r.step || r.phase === "promoted" ? "done" : i + 1 === r.step ? "current" : ""}>
            {pct(s)}
          </li>
        ))}
      </ol>
      {r.breach ? <p class="problem" role="status">Breached: {r.breach}</p> : null}
      <table data-testid="guardrails">
        <thead>
          <tr><th scope="col">Guardrail</th><th scope="col">Now</th><th scope="col">How close to breaching</th></tr>
        </thead>
        <tbody>
          {rails.map((g) => (
            <tr key={g.name}>
              <th scope="row">{g.name}</th>
              <td>{g.text}</td>
              <td>
                {g.name === "evidence" ? (
                  g.value >= g.limit ? "enough to judge" : <span class="muted">{g.limit - g.value} more requests needed</span>
                ) : g.closeness == null ? <span class="muted">not enough evidence yet</span> : (
                  <><Meter value={g.closeness} label={`${g.name}: ${Math.round(g.closeness * 100)}% of the limit`} /> {Math.round(g.closeness * 100)}%</>
                )}
              </td>
            </tr>
          ))}
        </tbody>
      </table>
    </section>
  );
}

function AbPanel({ r, history }) {
  const times = history.map((h) => h.t);
  return (
    <section aria-labelledby="ab-h" data-testid="ab">
      <h2 id="ab-h">A/B test: {r.control} against {r.treatment}</h2>
      <p>
        p-value <strong data-testid="ab-p">{num(r.p_value, 3)}</strong> (decides at α = {r.alpha}) · difference{" "}
        {num(r.difference)} · always-valid {Math.round((r.confidence || 0.95) * 100)}% interval [{num(r.ci_low)},{" "}
        {num(r.ci_high)}] · {r.n_control} and {r.n_treatment} observations
        {r.winner ? <> · winner <strong>{r.winner}</strong></> : null}
      </p>
      {history.length > 1 ? (
        <div class="charts">
          <Chart title="p-value" names={["p-value"]} data={[times, history.map((h) => h.p)]} />
          <Chart title="Difference and its interval" names={["low", "difference", "high"]}
            data={[times, history.map((h) => h.low), history.map((h) => h.diff), history.map((h) => h.high)]} />
        </div>
      ) : null}
    </section>
  );
}

function Shadows({ list }) {
  return (
    <section aria-labelledby="shadow-h">
      <h2 id="shadow-h">Shadows</h2>
      <table data-testid="shadows">
        <thead>
          <tr>
            <th scope="col">Primary</th><th scope="col">Mirror</th><th scope="col" class="num">Compared</th>
            <th scope="col" class="num">Failed</th><th scope="col" class="num">Dropped</th>
            <th scope="col" class="num">Max |diff|</th><th scope="col" class="num">Mean |diff|</th>
            <th scope="col" class="num">Argmax agreement</th><th scope="col" class="num">KL</th>
          </tr>
        </thead>
        <tbody>
          {list.map((s) => (
            <tr key={`${s.primary}>${s.mirror}`}>
              <td>{s.primary}</td><td>{s.mirror}</td><td class="num">{s.compared}</td>
              <td class="num">{s.failed}</td><td class="num">{s.dropped}</td>
              <td class="num">{num(s.max_abs_diff)}</td><td class="num">{num(s.mean_abs_diff)}</td>
              <td class="num">{pct(s.argmax_agreement)}</td><td class="num">{num(s.kl_divergence)}</td>
            </tr>
          ))}
        </tbody>
      </table>
    </section>
  );
}

function Memory({ stats }) {
  const m = stats.memory;
  const loaded = stats.versions.filter((v) => v.state === "loaded" || v.state === "loading");
  return (
    <section aria-labelledby="memory-h" data-testid="memory">
      <h2 id="memory-h">Memory budget</h2>
      <p>
        <Meter value={m.limit_bytes ? m.used_bytes / m.limit_bytes : 0} label="memory used of the budget" />{" "}
        {bytes(m.used_bytes)} of {bytes(m.limit_bytes)} (peak {bytes(m.peak_bytes)}) · {loaded.length} of{" "}
        {stats.versions.length} versions loaded · {m.evictions} evictions
      </p>
    </section>
  );
}

function Actions({ model, versions, policy }) {
  const spec = policy.spec || {};
  const initial = {};
  for (const v of versions) {
    initial[v] = spec.type === "weighted" && spec.weights && spec.weights[v] != null ? spec.weights[v] : 0;
  }
  const [weights, setWeights] = useState(initial);
  const [stable, setStable] = useState(versions[0]);
  const [candidate, setCandidate] = useState(versions[versions.length - 1]);
  const [steps, setSteps] = useState("0.05, 0.25, 0.5, 1");
  const [stepSeconds, setStepSeconds] = useState("60");
  const [dialog, setDialog] = useState(null);
  const [done, setDone] = useState("");
  const put = (body) => api("PUT", paths.policy(model), body);
  const canary = policy.report && policy.report.stable && policy.report.phase;
  const parsedSteps = steps.split(",").map((s) => Number(s.trim())).filter((x) => !Number.isNaN(x));
  const close = (changed) => {
    if (changed) setDone(`${dialog.title}: done.`);
    setDialog(null);
  };
  return (
    <section aria-labelledby="actions-h">
      <h2 id="actions-h">Change traffic</h2>
      <p class="muted small" role="status">{done}</p>
      <form class="inline-form" onSubmit={(e) => {
        e.preventDefault();
        const w = Object.fromEntries(Object.entries(weights).filter(([, x]) => x > 0));
        setDialog({ title: "Set weights", body: { type: "weighted", weights: w },
          text: Object.entries(w).map(([v, x]) => `${v}: ${x}`).join(", ") });
      }}>
        <h3>Weights</h3>
        {versions.map((v) => (
          <label key={v}>
            {v}
            <input type="number" min="0" step="any" value={weights[v]} data-testid={`weight-${v}`}
              onInput={(e) => setWeights({ ...weights, [v]: Number(e.currentTarget.value) })} />
          </label>
        ))}
        <button type="submit" disabled={!Object.values(weights).some((x) => x > 0)}>Set weights…</button>
      </form>
      <form class="inline-form" onSubmit={(e) => {
        e.preventDefault();
        setDialog({ title: "Start a canary", body: { type: "canary", stable, candidate, steps: parsedSteps,
          step_seconds: Number(stepSeconds) }, text: `${stable} → ${candidate}, steps ${parsedSteps.join(", ")}, ${stepSeconds} s each` });
      }}>
        <h3>Canary</h3>
        <label>
          Stable
          <select value={stable} onChange={(e) => setStable(e.currentTarget.value)} data-testid="canary-stable">
            {versions.map((v) => <option key={v} value={v}>{v}</option>)}
          </select>
        </label>
        <label>
          Candidate
          <select value={candidate} onChange={(e) => setCandidate(e.currentTarget.value)} data-testid="canary-candidate">
            {versions.map((v) => <option key={v} value={v}>{v}</option>)}
          </select>
        </label>
        <label>
          Steps (shares)
          <input value={steps} onInput={(e) => setSteps(e.currentTarget.value)} data-testid="canary-steps" />
        </label>
        <label>
          Seconds a step
          <input type="number" min="0" step="any" value={stepSeconds} onInput={(e) => setStepSeconds(e.currentTarget.value)} />
        </label>
        <button type="submit" disabled={stable === candidate || !parsedSteps.length} data-testid="canary-start">
          Start canary…
        </button>
        {canary ? (
          <button type="button" data-testid="canary-stop" onClick={() => setDialog({ title: "Stop the canary",
            body: { type: "fixed", version: policy.report.stable },
            text: `every request goes to ${policy.report.stable} again` })}>
            Stop canary…
          </button>
        ) : null}
      </form>
      {dialog ? (
        <Confirm title={`${dialog.title} for ${model}`} onClose={close} onConfirm={() => put(dialog.body)} withReason={false}>
          <p>{dialog.text}</p>
          <p class="muted small">Recorded in the audit log as a policy change.</p>
        </Confirm>
      ) : null}
    </section>
  );
}

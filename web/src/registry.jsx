import { useState } from "preact/hooks";
import { api, paths } from "./api.js";
import { Lineage } from "./lineage.jsx";
import { Confirm, Loading, Problem, bytes, num, usePoll, when } from "./util.jsx";

export function RegistryModel({ model }) {
  const [versions, reloadVersions] = usePoll(() => api("GET", paths.versions(model)), 10000, [model]);
  const [history, reloadHistory] = usePoll(() => api("GET", paths.history(model)), 10000, [model]);
  const [selected, setSelected] = useState(null);
  const reload = () => Promise.all([reloadVersions(), reloadHistory()]);
  const list = versions.data || [];
  return (
    <main id="main">
      <h1>
        {model} <span class="muted small">registry</span>
      </h1>
      <p>
        <a href={`#/live/${encodeURIComponent(model)}`}>Live deployment of {model}</a>
      </p>
      <Problem error={versions.error} />
      {versions.loading ? (
        <Loading what="versions" />
      ) : !versions.data ? null : (
        <>
          <section aria-labelledby="versions-h">
            <h2 id="versions-h">Versions</h2>
            <Versions list={list} selected={selected} onSelect={setSelected} />
          </section>
          <section aria-labelledby="lineage-h">
            <h2 id="lineage-h">Lineage</h2>
            <Lineage model={model} versions={list} selected={selected} onSelect={setSelected} />
          </section>
          <section aria-labelledby="diff-h">
            <h2 id="diff-h">Compare two versions</h2>
            <Diff list={list} />
          </section>
          <section aria-labelledby="aliases-h">
            <h2 id="aliases-h">Aliases</h2>
            <Aliases model={model} list={list} onChanged={reload} />
          </section>
        </>
      )}
      {versions.error && !versions.data ? null : (
        <section aria-labelledby="history-h">
          <h2 id="history-h">Audit history</h2>
          <Problem error={history.error} />
          {history.loading ? <Loading what="history" /> : <History entries={history.data || []} />}
        </section>
      )}
    </main>
  );
}

function Signature({ s }) {
  if (!s) return <span class="muted">–</span>;
  const side = (specs) =>
    specs.map((t) => `${t.name}: ${t.dtype}[${t.shape.map((d) => (d < 0 ? "?" : d)).join(",")}]`).join(", ");
  return (
    <span class="signature">
      {side(s.inputs)} → {side(s.outputs)}
    </span>
  );
}

function Versions({ list, selected, onSelect }) {
  const keys = [...new Set(list.flatMap((v) => Object.keys(v.metrics)))].sort();
  return (
    <div class="scroll" tabIndex={0} role="region" aria-label="versions">
      <table data-testid="versions">
        <thead>
          <tr>
            <th scope="col">Version</th><th scope="col">Aliases</th><th scope="col">Created</th>
            <th scope="col">Size</th><th scope="col">Parent</th><th scope="col">Tags</th>
            {keys.map((k) => <th key={k} scope="col" class="num">{k}</th>)}
            <th scope="col">Signature</th>
          </tr>
        </thead>
        <tbody>
          {[...list].reverse().map((v) => (
            <tr key={v.version} class={selected === v.version ? "selected" : ""} data-version={v.version}>
              <th scope="row">
                <button class="link" onClick={() => onSelect(v.version)} aria-pressed={selected === v.version}>
                  {v.version}
                </button>
              </th>
              <td>{v.aliases.map((a) => <span key={a} class="badge alias">@{a}</span>)}</td>
              <td>{when(v.created_at)}</td>
              <td class="num">{bytes(v.size)}</td>
              <td>{v.parent || "–"}</td>
              <td>{Object.entries(v.tags).map(([k, x]) => <span key={k} class="badge">{k}={x}</span>)}</td>
              {keys.map((k) => <td key={k} class="num">{num(v.metrics[k])}</td>)}
              <td><Signature s={v.signature} /></td>
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}

function Diff({ list }) {
  const labels = list.map((v) => v.version);
  const [a, setA] = useState(labels.length > 1 ? labels[labels.length - 2] : labels[0]);
  const [b, setB] = useState(labels[labels.length - 1]);
  if (labels.length < 2) return <p class="muted">One version: nothing to compare.</p>;
  const va = list.find((v) => v.version === a);
  const vb = list.find((v) => v.version === b);
  const keys = [...new Set([...Object.keys(va ? va.metrics : {}), ...Object.keys(vb ? vb.metrics : {})])].sort();
  return (
    <div>
      <div class="inline-form">
        <label>
          From
          <select value={a} onChange={(e) => setA(e.currentTarget.value)} data-testid="diff-a">
            {labels.map((l) => <option key={l} value={l}>{l}</option>)}
          </select>
        </label>
        <label>
          To
          <select value={b} onChange={(e) => setB(e.currentTarget.value)} data-testid="diff-b">
            {labels.map((l) => <option key={l} value={l}>{l}</option>)}
          </select>
        </label>
      </div>
      {keys.length === 0 ? (
        <p class="muted">Neither version has metrics.</p>
      ) : (
        <table data-testid="diff">
          <thead>
            <tr>
              <th scope="col">Metric</th><th scope="col" class="num">{a}</th><th scope="col" class="num">{b}</th>
              <th scope="col" class="num">Change</th><th scope="col" class="num">Relative</th>
            </tr>
          </thead>
          <tbody>
            {keys.map((k) => {
              const x = va.metrics[k];
              const y = vb.metrics[k];
              const d = x != null && y != null ? y - x : null;
              const rel = d != null && x ? d / Math.abs(x) : null;
              return (
                <tr key={k}>
                  <th scope="row">{k}</th>
                  <td class="num">{num(x)}</td>
                  <td class="num">{num(y)}</td>
                  <td class="num">{d == null ? "–" : (d > 0 ? "▲ +" : d < 0 ? "▼ " : "") + num(d)}</td>
                  <td class="num">{rel == null ? "–" : `${rel > 0 ? "+" : ""}${(rel * 100).toFixed(1)}%`}</td>
                </tr>
              );
            })}
          </tbody>
        </table>
      )}
    </div>
  );
}

function Aliases({ model, list, onChanged }) {
  const current = {};
  for (const v of list) for (const a of v.aliases) current[a] = v.version;
  const names = Object.keys(current).sort();
  const [alias, setAlias] = useState(names[0] || "production");
  const [target, setTarget] = useState(list.length ? list[list.length - 1].version : "");
  const [dialog, setDialog] = useState(null);
  const expected = current[alias];
  const close = (changed) => {
    setDialog(null);
    if (changed) onChanged();
  };
  return (
    <div>
      {names.length ? (
        <table data-testid="aliases">
          <thead>
            <tr><th scope="col">Alias</th><th scope="col">Version</th><th scope="col">Actions</th></tr>
          </thead>
          <tbody>
            {names.map((a) => (
              <tr key={a}>
                <th scope="row">@{a}</th>
                <td>{current[a]}</td>
                <td>
                  <button onClick={() => setDialog({ kind: "rollback", alias: a })} data-testid={`rollback-${a}`}>
                    Roll back
                  </button>
                </td>
              </tr>
            ))}
          </tbody>
        </table>
      ) : (
        <p class="muted">No aliases yet.</p>
      )}
      <form class="inline-form" onSubmit={(e) => { e.preventDefault(); setDialog({ kind: "move" }); }}
        aria-labelledby="move-h">
        <h3 id="move-h">Move an alias</h3>
        <label>
          Alias
          <input list="alias-names" value={alias} required pattern="[A-Za-z0-9_.\-]+" data-testid="move-alias"
            onInput={(e) => setAlias(e.currentTarget.value)} />
          <datalist id="alias-names">{names.map((a) => <option key={a} value={a} />)}</datalist>
        </label>
        <label>
          To version
          <select value={target} onChange={(e) => setTarget(e.currentTarget.value)} data-testid="move-version">
            {[...list].reverse().map((v) => <option key={v.version} value={v.version}>{v.version}</option>)}
          </select>
        </label>
        <span class="muted">now: {expected ? expected : "unset"}</span>
        <button type="submit" class="primary" disabled={!alias || !target || expected === target} data-testid="move">
          Move…
        </button>
      </form>
      {dialog && dialog.kind === "move" ? (
        <Confirm title={`Move @${alias} of ${model}`} confirmLabel="Move" onClose={close}
          onConfirm={(reason) =>
            api("PUT", paths.alias(model, alias), {
              version: target,
              ...(expected ? { expected } : {}),
              ...(reason ? { reason } : {}),
            })
          }>
          <p>
            @{alias}: <strong>{expected || "unset"}</strong> → <strong>{target}</strong>. The move is refused if
            someone else moved the alias since this page read it (expected {expected || "unset"}).
          </p>
        </Confirm>
      ) : null}
      {dialog && dialog.kind === "rollback" ? (
        <Confirm title={`Roll back @${dialog.alias} of ${model}`} confirmLabel="Roll back" onClose={close}
          onConfirm={(reason) =>
            api("POST", paths.rollback(model), { alias: dialog.alias, ...(reason ? { reason } : {}) })
          }>
          <p>
            @{dialog.alias} goes back to the version it pointed to before {current[dialog.alias]}.
          </p>
        </Confirm>
      ) : null}
    </div>
  );
}

function History({ entries }) {
  if (!entries.length) return <p class="muted">No changes recorded.</p>;
  return (
    <div class="scroll tall" tabIndex={0} role="region" aria-label="audit history">
      <table data-testid="history">
        <thead>
          <tr>
            <th scope="col">Time</th><th scope="col">Actor</th><th scope="col">Action</th>
            <th scope="col">Version</th><th scope="col">Alias</th><th scope="col">Change</th><th scope="col">Reason</th>
          </tr>
        </thead>
        <tbody>
          {[...entries].reverse().map((e) => (
            <tr key={e.id}>
              <td>{when(e.time)}</td>
              <td>{e.actor}</td>
              <td>{e.action}</td>
              <td>{e.version || "–"}</td>
              <td>{e.alias ? `@${e.alias}` : "–"}</td>
              <td>{e.from_version || e.to_version ? `${e.from_version || "∅"} → ${e.to_version || "∅"}` : "–"}</td>
              <td class="message">{e.reason}</td>
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}

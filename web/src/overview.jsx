import { api, paths } from "./api.js";
import { Loading, Problem, bytes, usePoll, when } from "./util.jsx";

export function Overview() {
  const [served] = usePoll(() => api("GET", paths.served()), 3000);
  const [models] = usePoll(() => api("GET", paths.models()), 10000);
  return (
    <main id="main">
      <h1>Overview</h1>
      <section aria-labelledby="served-h">
        <h2 id="served-h">Live deployments</h2>
        <Problem error={served.error} />
        {served.loading ? <Loading what="deployments" /> : <Served list={served.data || []} />}
      </section>
      <section aria-labelledby="registry-h">
        <h2 id="registry-h">Registry</h2>
        <Problem error={models.error} />
        {models.loading ? <Loading what="models" /> : <Models list={models.data || []} />}
      </section>
    </main>
  );
}

function Served({ list }) {
  if (!list.length) return <p class="muted">This server serves no models.</p>;
  return (
    <table data-testid="served">
      <thead>
        <tr>
          <th scope="col">Model</th><th scope="col">Policy</th><th scope="col">Follows</th>
          <th scope="col">Versions</th><th scope="col">Requests</th><th scope="col">Memory</th>
        </tr>
      </thead>
      <tbody>
        {list.map((d) => (
          <tr key={d.model}>
            <th scope="row"><a href={`#/live/${encodeURIComponent(d.model)}`}>{d.model}</a></th>
            <td>{d.policy}</td>
            <td>{d.alias ? `@${d.alias}` : "–"}</td>
            <td>
              {d.versions.map((v) => (
                <span key={v.version} class={`badge ${v.health}`} title={`${v.state}, ${v.health}`}>
                  {v.version}
                </span>
              ))}
            </td>
            <td class="num">{d.versions.reduce((n, v) => n + v.requests, 0)}</td>
            <td class="num">{d.memory ? `${bytes(d.memory.used_bytes)} of ${bytes(d.memory.limit_bytes)}` : "–"}</td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}

function Models({ list }) {
  if (!list.length) return <p class="muted">The registry holds no models.</p>;
  return (
    <table data-testid="models">
      <thead>
        <tr>
          <th scope="col">Model</th><th scope="col">Versions</th><th scope="col">Latest</th>
          <th scope="col">Aliases</th><th scope="col">Created</th><th scope="col">Description</th>
        </tr>
      </thead>
      <tbody>
        {list.map((m) => (
          <tr key={m.name}>
            <th scope="row"><a href={`#/registry/${encodeURIComponent(m.name)}`}>{m.name}</a></th>
            <td class="num">{m.version_count}</td>
            <td>{m.latest || "–"}</td>
            <td>
              {Object.entries(m.aliases).map(([a, v]) => (
                <span key={a} class="badge alias">@{a} → {v}</span>
              ))}
            </td>
            <td>{when(m.created_at)}</td>
            <td>{m.description}</td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}

import dagre from "@dagrejs/dagre";
import { num, when } from "./util.jsx";

const NODE_W = 150;
const NODE_H = 44;

// The versions of a model as a graph: an edge from each version's parent to it (a parent in
// another model is drawn too, dashed). Laid out by dagre, drawn as SVG.
export function Lineage({ model, versions, selected, onSelect }) {
  if (!versions.length) return <p class="muted">No versions.</p>;
  const g = new dagre.graphlib.Graph();
  g.setGraph({ rankdir: "LR", nodesep: 18, ranksep: 40, marginx: 8, marginy: 8 });
  g.setDefaultEdgeLabel(() => ({}));
  const own = new Set(versions.map((v) => `${model}:${v.version}`));
  for (const v of versions) {
    g.setNode(`${model}:${v.version}`, { width: NODE_W, height: NODE_H, v });
  }
  let edges = 0;
  for (const v of versions) {
    if (!v.parent) continue;
    if (!own.has(v.parent)) g.setNode(v.parent, { width: NODE_W, height: NODE_H, external: true });
    g.setEdge(v.parent, `${model}:${v.version}`);
    edges += 1;
  }
  dagre.layout(g);
  const { width, height } = g.graph();
  return (
    <figure class="lineage">
      <figcaption>
        Lineage: {versions.length} versions, {edges} derived from another
      </figcaption>
      <div class="scroll" tabIndex={0} role="region" aria-label="lineage graph">
        <svg width={width} height={height} viewBox={`0 0 ${width} ${height}`} role="img"
          aria-label={`lineage graph of ${model}`}>
          <defs>
            <marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto">
              <path d="M0,0 L10,5 L0,10 z" class="arrowhead" />
            </marker>
          </defs>
          {g.edges().map((e) => {
            const pts = g.edge(e).points;
            const d = pts.map((p, i) => `${i ? "L" : "M"}${p.x},${p.y}`).join(" ");
            return <path key={`${e.v}>${e.w}`} d={d} class="edge" marker-end="url(#arrow)" />;
          })}
          {g.nodes().map((id) => {
            const n = g.node(id);
            const label = n.external ? id : n.v.version;
            // Under the label: the aliases, else the first metric, else the creation date.
            const metric = n.external ? null : Object.entries(n.v.metrics).sort()[0];
            const sub = n.external
              ? "other model"
              : n.v.aliases.length
                ? n.v.aliases.map((a) => `@${a}`).join(" ")
                : metric
                  ? `${metric[0]} ${num(metric[1])}`
                  : when(n.v.created_at).slice(0, 10);
            const cls = `node${n.external ? " external" : ""}${!n.external && selected === n.v.version ? " selected" : ""}`;
            return (
              <g key={id} class={cls} transform={`translate(${n.x - NODE_W / 2},${n.y - NODE_H / 2})`}
                data-version={n.external ? null : n.v.version}
                tabIndex={n.external ? -1 : 0}
                onClick={() => !n.external && onSelect && onSelect(n.v.version)}
                onKeyDown={(e) => e.key === "Enter" && !n.external && onSelect && onSelect(n.v.version)}>
                <rect width={NODE_W} height={NODE_H} rx="6" />
                <text x="8" y="18" class="label">{label}</text>
                <text x="8" y="35" class="sub">{sub}</text>
              </g>
            );
          })}
        </svg>
      </div>
    </figure>
  );
}

import { useEffect, useRef } from "preact/hooks";
import uPlot from "uplot";

// A palette that keeps its contrast on white and tells lines apart without colour alone (dashes).
export const COLORS = ["#1f5fbf", "#c0392b", "#1e8449", "#8e44ad", "#b9770e", "#117a8b", "#444"];
const DASHES = [[], [6, 3], [2, 2], [8, 3, 2, 3]];

// One time-series chart over uPlot. `data` is [times, ...series], `names` the series' labels.
export function Chart({ title, data, names, unit, height = 180 }) {
  const box = useRef(null);
  const plot = useRef(null);
  const key = names.join("\u0000");
  useEffect(() => {
    const width = Math.max(280, box.current.clientWidth || 480);
    const opts = {
      width,
      height,
      legend: { live: false },
      // At least a minute of time on the axis, so that the first points do not stretch it.
      scales: {
        x: {
          time: true,
          range: (u, min, max) => {
            const t = u.data[0];
            if (!t || !t.length) return [min, max];
            const last = t[t.length - 1];
            return [Math.min(t[0], last - 60), last];
          },
        },
        y: { range: (u, min, max) => [0, max > 0 ? max * 1.1 : 1] },
      },
      axes: [{}, { values: (u, vals) => vals.map((v) => `${+v.toPrecision(3)}${unit ? " " + unit : ""}`), size: 70 }],
      series: [
        {},
        ...names.map((n, i) => ({
          label: n,
          stroke: COLORS[i % COLORS.length],
          dash: DASHES[i % DASHES.length],
          width: 2,
          spanGaps: true,
        })),
      ],
    };
    plot.current = new uPlot(opts, data, box.current);
    const resize = () => plot.current && plot.current.setSize({ width: Math.max(280, box.current.clientWidth), height });
    window.addEventListener("resize", resize);
    return () => {
      window.removeEventListener("resize", resize);
      plot.current.destroy();
      plot.current = null;
    };
  }, [key]);
  useEffect(() => {
    if (plot.current) plot.current.setData(data);
  }, [data]);
  return (
    <figure class="chart">
      <figcaption>{title}</figcaption>
      <div ref={box} role="img" aria-label={`${title}: ${names.join(", ")}`} />
    </figure>
  );
}

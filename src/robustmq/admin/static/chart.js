// A small line chart on a <canvas>: a bounded window of points per series,
// redrawn on every push.  No dependencies.
"use strict";

class LineChart {
  // series: [{label, color}]; maxPoints bounds the window kept in memory.
  constructor(canvas, series, maxPoints) {
    this.canvas = canvas;
    this.series = series;
    this.maxPoints = maxPoints || 90;
    this.points = series.map(() => []);
    this.draw();
  }

  push(values) {
    values.forEach((v, i) => {
      const pts = this.points[i];
      pts.push(Number.isFinite(v) ? v : 0);
      if (pts.length > this.maxPoints) pts.shift();
    });
    this.draw();
  }

  static niceMax(v) {
    if (v <= 0) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }

  static fmt(v) {
    if (v >= 1e6) return (v / 1e6).toFixed(1) + "M";
    if (v >= 1e3) return (v / 1e3).toFixed(1) + "k";
    return Number.isInteger(v) ? String(v) : String(+v.toFixed(2));
  }

  draw() {
    const c = this.canvas, dpr = window.devicePixelRatio || 1;
    const w = c.clientWidth || 400, h = c.clientHeight || Number(c.getAttribute("height")) || 200;
    if (c.width !== Math.round(w * dpr) || c.height !== Math.round(h * dpr)) {
      c.width = Math.round(w * dpr);
      c.height = Math.round(h * dpr);
    }
    const g = c.getContext("2d");
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, w, h);
    const left = 44, right = 8, top = 22, bottom = 18;
    const pw = w - left - right, ph = h - top - bottom;
    let max = 0;
    for (const pts of this.points) for (const v of pts) if (v > max) max = v;
    max = LineChart.niceMax(max);
    g.font = "11px system-ui, sans-serif";
    g.strokeStyle = "#d0d7de";
    g.fillStyle = "#656d76";
    g.lineWidth = 1;
    g.textAlign = "right";
    g.textBaseline = "middle";
    for (let i = 0; i <= 4; i++) {
      const y = top + ph - (ph * i) / 4;
      g.beginPath();
      g.moveTo(left, Math.round(y) + 0.5);
      g.lineTo(left + pw, Math.round(y) + 0.5);
      g.stroke();
      g.fillText(LineChart.fmt((max * i) / 4), left - 6, y);
    }
    g.textAlign = "left";
    g.fillText(`last ${this.maxPoints} samples`, left, h - 7);
    this.series.forEach((s, i) => {
      const pts = this.points[i];
      g.strokeStyle = s.color;
      g.lineWidth = 2;
      g.beginPath();
      pts.forEach((v, j) => {
        const x = left + (pw * (this.maxPoints - pts.length + j)) / (this.maxPoints - 1);
        const y = top + ph - (ph * v) / max;
        if (j === 0) g.moveTo(x, y); else g.lineTo(x, y);
      });
      g.stroke();
      // legend
      const lx = left + 4 + i * 110;
      g.fillStyle = s.color;
      g.fillRect(lx, 6, 10, 10);
      g.fillStyle = "#1f2328";
      g.textBaseline = "middle";
      const last = pts.length ? " " + LineChart.fmt(pts[pts.length - 1]) : "";
      g.fillText(s.label + last, lx + 14, 11);
    });
  }
}

window.LineChart = LineChart;
